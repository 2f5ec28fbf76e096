//! Kernel uevents about block devices, parsed without allocating.
//!
//! Two sources have the same `KEY=VALUE` properties: a message on a
//! `NETLINK_KOBJECT_UEVENT` socket (`ACTION@DEVPATH`, then NUL-separated properties) and
//! a device's sysfs `uevent` file (newline-separated, no action: the device is there).
//! Both are read as hostile input: the parser looks at no more than [`MESSAGE_MAX`]
//! bytes and [`FIELDS_MAX`] properties, refuses a message that names a property it
//! cares about twice, and only yields a device name that is a single safe path
//! component. It never panics and never indexes past a checked length.
//!
//! This file uses nothing but `core`, so the tests (`tests/uevent.rs`) compile it as it
//! is, on the host.

/// The longest message that is parsed; a longer one is refused whole. The kernel's own
/// limit is 2048 bytes of properties (`UEVENT_BUFFER_SIZE`) plus the `ACTION@DEVPATH`
/// header, which is at most a path.
pub const MESSAGE_MAX: usize = 8192;

/// The most properties a message may have; a block device's have about ten.
pub const FIELDS_MAX: usize = 64;

/// The longest device name taken (`vdb`, `nvme0n1p1`, `sda-12` fit many times over).
pub const DEVNAME_MAX: usize = 32;

/// What happened to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It appeared (or is there, for a sysfs `uevent` file).
    Add,
    /// It is gone.
    Remove,
    /// Anything else (`change`, `bind`, `move`, ...): not acted on.
    Other,
}

/// Which kind of block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevType {
    /// A whole disk (`vdb`).
    Disk,
    /// A partition of one (`vdb1`).
    Partition,
}

/// A uevent about a block disk or partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEvent<'a> {
    /// What happened.
    pub action: Action,
    /// Disk or partition.
    pub devtype: DevType,
    /// The node's name below `/dev`: one path component of at most [`DEVNAME_MAX`]
    /// bytes of `[A-Za-z0-9._-]`, not starting with a dot.
    pub devname: &'a str,
    /// The kernel's disk sequence number (Linux 5.15 and later; a partition has its
    /// disk's, from Linux 6.1 on at the latest): it tells a
    /// disk from an earlier one that had the same name.
    pub diskseq: Option<u64>,
}

/// The properties of interest, each seen at most once.
#[derive(Default)]
struct Fields<'a> {
    action: Option<&'a [u8]>,
    subsystem: Option<&'a [u8]>,
    devtype: Option<&'a [u8]>,
    devname: Option<&'a [u8]>,
    diskseq: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// Reads `KEY=VALUE` properties separated by `separator`; `None` if there are too
    /// many, or one of interest comes twice.
    fn read(properties: &'a [u8], separator: u8) -> Option<Fields<'a>> {
        let mut fields = Fields::default();
        let mut count = 0;
        for field in properties.split(|&b| b == separator) {
            if field.is_empty() {
                continue;
            }
            count += 1;
            if count > FIELDS_MAX {
                return None;
            }
            // A field without '=' is noise; skip it rather than lose the message.
            let Some(eq) = field.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (key, value) = (&field[..eq], &field[eq + 1..]);
            let slot = match key {
                b"ACTION" => &mut fields.action,
                b"SUBSYSTEM" => &mut fields.subsystem,
                b"DEVTYPE" => &mut fields.devtype,
                b"DEVNAME" => &mut fields.devname,
                b"DISKSEQ" => &mut fields.diskseq,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return None;
            }
        }
        Some(fields)
    }

    /// The block event these fields describe, with `action`; `None` for anything but a
    /// block disk or partition with a usable name.
    fn block_event(&self, action: Action) -> Option<BlockEvent<'a>> {
        let devtype = match self.devtype? {
            b"disk" => DevType::Disk,
            b"partition" => DevType::Partition,
            _ => return None,
        };
        let devname = devname(self.devname?)?;
        let diskseq = match self.diskseq {
            Some(text) => Some(decimal(text)?),
            None => None,
        };
        Some(BlockEvent {
            action,
            devtype,
            devname,
            diskseq,
        })
    }
}

/// Parses one datagram from a `NETLINK_KOBJECT_UEVENT` socket (group 1, the kernel's):
/// `ACTION@DEVPATH\0KEY=VALUE\0...`. `None` for anything that is not a well-formed
/// event about a block disk or partition: other subsystems, udev's re-broadcasts (they
/// start with `libudev`), oversized or garbled messages.
pub fn parse_kernel_message(message: &[u8]) -> Option<BlockEvent<'_>> {
    if message.len() > MESSAGE_MAX {
        return None;
    }
    let header_end = message.iter().position(|&b| b == 0)?;
    let header = &message[..header_end];
    let at = header.iter().position(|&b| b == b'@')?;
    let header_action = &header[..at];
    let fields = Fields::read(&message[header_end + 1..], 0)?;
    // The header and ACTION= say the same in every kernel message; a message where they
    // disagree is not one.
    if fields.action? != header_action || fields.subsystem? != b"block" {
        return None;
    }
    let action = match header_action {
        b"add" => Action::Add,
        b"remove" => Action::Remove,
        _ => Action::Other,
    };
    fields.block_event(action)
}

/// Parses a block device's sysfs `uevent` file (`/sys/class/block/NAME/uevent`:
/// `KEY=VALUE` lines, no action or subsystem): the device is there, so the action is
/// [`Action::Add`].
pub fn parse_sysfs_uevent(text: &[u8]) -> Option<BlockEvent<'_>> {
    if text.len() > MESSAGE_MAX {
        return None;
    }
    Fields::read(text, b'\n')?.block_event(Action::Add)
}

/// A device name that is safe as one path component below `/dev` and in a mount
/// directory's name.
fn devname(bytes: &[u8]) -> Option<&str> {
    let safe = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if bytes.is_empty() || bytes.len() > DEVNAME_MAX || bytes[0] == b'.' || !bytes.iter().all(safe)
    {
        return None;
    }
    core::str::from_utf8(bytes).ok()
}

/// A decimal number of at most 20 digits that fits a `u64`, with nothing else around it.
fn decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}
