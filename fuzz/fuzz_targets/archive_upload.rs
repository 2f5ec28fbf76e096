//! An arbitrary upload archive (tar, tar.gz or tar.zst bytes), checked by
//! `ops::archive::read_upload` and written into both backends: a small vFAT image and a
//! container directory opened with `ops::open_target`. No panic, no hang, bounded
//! memory; what an upload accepts reads back byte for byte, with no setuid, setgid or
//! sticky bit and nothing beside the area; a refused image upload leaves the image as it
//! was.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nlxtp_host::area::vfat::create_image;
use nlxtp_host::area::{EntryKind, SharedArea, UploadData, WalkLimits};
use nlxtp_host::ops::archive::{read_upload, ArchiveLimits};
use nlxtp_host::ops::open_target;

/// Small bounds keep each input's work small (one 1 MiB image, a few files).
const LIMITS: ArchiveLimits = ArchiveLimits {
    max_entries: 256,
    max_total_bytes: 256 << 10,
};

struct Places {
    image: PathBuf,
    /// The directory that holds only the container area.
    parent: PathBuf,
    area: PathBuf,
}

fn places() -> &'static Places {
    static PLACES: OnceLock<Places> = OnceLock::new();
    PLACES.get_or_init(|| {
        let dir = scratch::dir("archive_upload");
        let image = dir.join("area.img");
        create_image(&image, 1 << 20, Some(12), None).expect("a fresh 1 MiB image");
        let parent = dir.join("container");
        let area = parent.join("area");
        std::fs::create_dir_all(&area).expect("the container area");
        Places {
            image,
            parent,
            area,
        }
    })
}

/// What an accepted upload must read back as: each file's bytes.
fn expected(data: &[u8]) -> Option<BTreeMap<String, Vec<u8>>> {
    let parsed = read_upload(data, &LIMITS, false, None, None).ok()?;
    let mut files = BTreeMap::new();
    for file in parsed.files {
        match file.data {
            UploadData::Bytes(bytes) => {
                files.insert(file.path.as_str().to_owned(), bytes);
            }
            UploadData::Dir => {}
            UploadData::Reader { .. } => panic!("no file above the spool size fits the limits"),
        }
    }
    Some(files)
}

fn check_area(area: &dyn SharedArea, want: &BTreeMap<String, Vec<u8>>) {
    let mut seen = BTreeMap::new();
    area.walk(&WalkLimits::default(), &mut |entry, reader| {
        assert_eq!(entry.mode & 0o7000, 0, "{} keeps a special bit", entry.path);
        if let (EntryKind::File, Some(reader)) = (entry.kind, reader) {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes)?;
            seen.insert(entry.path.as_str().to_owned(), bytes);
        }
        Ok(())
    })
    .expect("an area the host just wrote walks");
    for (path, bytes) in want {
        assert_eq!(seen.get(path), Some(bytes), "{path} reads back as uploaded");
    }
    assert_eq!(seen.len(), want.len(), "no file beyond the upload");
}

fuzz_target!(|data: &[u8]| {
    let Some(want) = expected(data) else {
        return;
    };
    let places = places();

    // The vFAT image: accepted and read back, or refused and untouched.
    let before = std::fs::read(&places.image).expect("the image reads");
    let image = open_target(&places.image).expect("the image opens");
    let parsed = read_upload(data, &LIMITS, false, None, None).expect("the same bytes parse again");
    match image.replace(parsed.files) {
        Ok(()) => check_area(image.as_ref(), &want),
        Err(_) => assert!(
            std::fs::read(&places.image).expect("the image reads") == before,
            "a refused upload changed the image"
        ),
    }

    // The container directory: accepted and read back; nothing written beside it.
    let dir = open_target(&places.area).expect("the area opens");
    let parsed = read_upload(data, &LIMITS, false, None, None).expect("the same bytes parse again");
    if dir.replace(parsed.files).is_ok() {
        check_area(dir.as_ref(), &want);
    }
    let beside: Vec<_> = std::fs::read_dir(&places.parent)
        .expect("the container lists")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(beside, ["area"], "the upload wrote beside the area");
});
