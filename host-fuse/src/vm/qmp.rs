//! A small synchronous client of QEMU's machine protocol (QMP) over a unix socket: what
//! hot-plugging a shared disk into a running VM needs (`blockdev-add`, `device_add`,
//! `device_del`, the `DEVICE_DELETED` event, `blockdev-del`).
//!
//! QEMU is trusted less than fully: every line it sends is bounded
//! ([`MAX_LINE`]), every wait has a deadline, and events it sends while a command's
//! reply is awaited are kept (at most [`MAX_KEPT_EVENTS`]) for [`Qmp::wait_event`].
//!
//! QEMU serves one client per QMP socket at a time; a second one connects but gets no
//! greeting until the first has gone, which [`Qmp::connect`] reports as such.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The longest line accepted from QEMU (a reply or an event), newline included.
pub const MAX_LINE: usize = 1 << 20;

/// The most events kept for [`Qmp::wait_event`]; older ones are dropped first.
pub const MAX_KEPT_EVENTS: usize = 256;

/// How long [`Qmp::execute`] waits for a reply unless told otherwise
/// ([`Qmp::set_reply_timeout`]).
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to QEMU. Each message says what happened and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// Nothing listens on the socket.
    #[error("could not connect to the QMP socket {}: is QEMU running with -qmp unix:{},server=on,wait=off?", socket.display(), socket.display())]
    NoSocket {
        /// The socket's path.
        socket: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// QEMU did not answer in time.
    #[error("QEMU did not {what} within {after:?} on {}: is another client connected to this QMP socket (QEMU serves one at a time), or is QEMU stopped?", socket.display())]
    Timeout {
        /// The socket's path.
        socket: PathBuf,
        /// What it did not do ("greet", "reply to device_add").
        what: String,
        /// How long it was given.
        after: Duration,
    },
    /// An event did not come in time.
    #[error("QEMU sent no {event} event within {after:?}")]
    NoEvent {
        /// The event's name.
        event: String,
        /// How long it was waited for.
        after: Duration,
    },
    /// QEMU closed the connection.
    #[error("QEMU closed the QMP connection on {}: it has exited, or closed the monitor", socket.display())]
    Closed {
        /// The socket's path.
        socket: PathBuf,
    },
    /// What came is not QMP.
    #[error("{} sent something that is not QMP ({what}): is it QEMU's QMP socket (-qmp, not -monitor)?", socket.display())]
    Protocol {
        /// The socket's path.
        socket: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// QEMU refused a command.
    #[error("QEMU refused {command}: {desc} ({class})")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// Reading or writing the socket failed.
    #[error("the QMP connection on {} failed: check that QEMU still runs", socket.display())]
    Io {
        /// The socket's path.
        socket: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl QmpError {
    /// QEMU's error class, when QEMU refused a command.
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// An asynchronous event QEMU sent.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Its name (`DEVICE_DELETED`).
    pub name: String,
    /// Its `data` member (`Null` when it has none).
    pub data: Value,
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    stream: BufReader<UnixStream>,
    socket: PathBuf,
    /// Bytes of a line not complete when a read timed out.
    partial: Vec<u8>,
    events: VecDeque<QmpEvent>,
    next_id: u64,
    reply_timeout: Duration,
}

impl Qmp {
    /// Connects to QEMU's QMP socket at `socket`, reads the greeting and enters command
    /// mode (`qmp_capabilities`). A socket not there yet, or not listening yet (QEMU
    /// starting), is tried again until `timeout` has passed.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let mut qmp = nlxtp_host::vm::Qmp::connect("/run/vm1.qmp".as_ref(), Duration::from_secs(1))?;
    /// let status = qmp.execute("query-status", None)?;
    /// println!("{}", status["status"]);
    /// # Ok::<(), nlxtp_host::vm::QmpError>(())
    /// ```
    ///
    /// # Errors
    /// [`QmpError::NoSocket`] when nothing listens there in time, [`QmpError::Timeout`]
    /// when QEMU does not greet (another client is connected), [`QmpError::Protocol`],
    /// [`QmpError::Closed`], [`QmpError::Io`].
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(QmpError::NoSocket {
                        socket: socket.into(),
                        source,
                    })
                }
            }
        };
        let mut qmp = Qmp {
            stream: BufReader::new(stream),
            socket: socket.into(),
            partial: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        };
        // A QEMU that has just opened its socket greets at once; one that serves another
        // client never does.
        let allowed = timeout.max(Duration::from_secs(1));
        let greeting = qmp.read_message(Instant::now() + allowed, "greet", allowed)?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol(format!("the first message is not a greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// How long [`Qmp::execute`] waits for each reply from now on.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// The socket's path, for messages.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `command` with `arguments` (an object, or `None`) and returns its `return`
    /// value. Events that come before the reply are kept for [`Qmp::wait_event`].
    ///
    /// # Errors
    /// [`QmpError::Command`] with QEMU's class and description when QEMU refuses it;
    /// [`QmpError::Timeout`], [`QmpError::Closed`], [`QmpError::Protocol`],
    /// [`QmpError::Io`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(|source| self.io(source))?;
        let allowed = self.reply_timeout;
        let deadline = Instant::now() + allowed;
        let what = format!("reply to {command}");
        loop {
            let mut message = self.read_message(deadline, &what, allowed)?;
            if message.get("event").is_some() {
                self.keep_event(message);
                continue;
            }
            if message.get("id") != Some(&json!(id)) {
                // A reply to a command of an earlier, abandoned wait.
                continue;
            }
            if let Some(value) = message.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = message.get("error") {
                let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or("?");
                return Err(QmpError::Command {
                    command: command.into(),
                    class: text("class").into(),
                    desc: text("desc").into(),
                });
            }
            return Err(self.protocol(format!("a reply with neither return nor error: {message}")));
        }
    }

    /// Waits until QEMU sends the event `name` whose `data` satisfies `matches`, taking
    /// it from the kept events if it has already come. Other events are kept.
    ///
    /// # Errors
    /// [`QmpError::NoEvent`] when it does not come within `timeout`;
    /// [`QmpError::Closed`], [`QmpError::Protocol`], [`QmpError::Io`].
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<QmpEvent, QmpError> {
        let wanted = |event: &QmpEvent| event.name == name && matches(&event.data);
        if let Some(at) = self.events.iter().position(wanted) {
            return Ok(self.events.remove(at).expect("a position inside"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let message = match self.read_message(deadline, name, timeout) {
                Err(QmpError::Timeout { .. }) => {
                    return Err(QmpError::NoEvent {
                        event: name.into(),
                        after: timeout,
                    })
                }
                other => other?,
            };
            if message.get("event").is_none() {
                // A late reply to an abandoned command.
                continue;
            }
            let event = event_of(message);
            if wanted(&event) {
                return Ok(event);
            }
            self.push_event(event);
        }
    }

    /// The events kept so far (oldest first), taken out.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    fn keep_event(&mut self, message: Value) {
        self.push_event(event_of(message));
    }

    fn push_event(&mut self, event: QmpEvent) {
        if self.events.len() == MAX_KEPT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Reads one line (bounded) before `deadline` and parses it as a JSON object;
    /// `what` and `allowed` (the whole wait) are for the timeout's message.
    fn read_message(
        &mut self,
        deadline: Instant,
        what: &str,
        allowed: Duration,
    ) -> Result<Value, QmpError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout {
                    socket: self.socket.clone(),
                    what: what.into(),
                    after: allowed,
                });
            }
            self.stream
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|source| self.io(source))?;
            let room = (MAX_LINE - self.partial.len()) as u64;
            let mut limited = (&mut self.stream).take(room);
            match limited.read_until(b'\n', &mut self.partial) {
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let line = std::mem::take(&mut self.partial);
                    return match serde_json::from_slice::<Value>(&line) {
                        Ok(value) if value.is_object() => Ok(value),
                        Ok(_) => Err(self.protocol("a line that is not a JSON object".into())),
                        Err(e) => Err(self.protocol(format!("a line that is not JSON: {e}"))),
                    };
                }
                Ok(_) if self.partial.len() >= MAX_LINE => {
                    return Err(self.protocol(format!("a line longer than {MAX_LINE} bytes")));
                }
                // The end of the stream, between lines or inside one.
                Ok(_) => {
                    return Err(QmpError::Closed {
                        socket: self.socket.clone(),
                    })
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(source) => return Err(self.io(source)),
            }
        }
    }

    fn io(&self, source: io::Error) -> QmpError {
        QmpError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    fn protocol(&self, what: String) -> QmpError {
        QmpError::Protocol {
            socket: self.socket.clone(),
            what,
        }
    }
}

fn event_of(mut message: Value) -> QmpEvent {
    QmpEvent {
        name: message["event"].as_str().unwrap_or_default().to_owned(),
        data: message
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Null),
    }
}
