//! The view's own files: `NAME/.nlxtp/status.json` (the decoded status, made at each
//! open) and `NAME/.nlxtp/view.json` (what the view knows of the VM).

use std::time::SystemTime;

use super::super::error::chain;
use super::super::stage::Stage;
use super::vm::Vm;
use super::{lock, Attr, Kind, View};
use crate::ops;

/// The view's own directory in each VM's directory.
pub(super) const META_DIR: &str = ".nlxtp";
/// The decoded status, in [`META_DIR`].
const STATUS_JSON: &str = "status.json";
/// What the view itself knows about the VM (mode, pending changes), in [`META_DIR`].
const VIEW_JSON: &str = "view.json";

/// A file in [`META_DIR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Meta {
    Status,
    View,
}

impl Meta {
    /// Every file in [`META_DIR`], in listing order.
    pub(super) const ALL: [Meta; 2] = [Meta::Status, Meta::View];

    /// Its name in [`META_DIR`].
    pub(super) fn name(self) -> &'static str {
        match self {
            Meta::Status => STATUS_JSON,
            Meta::View => VIEW_JSON,
        }
    }

    /// The file of [`META_DIR`] called `name`, if any.
    pub(super) fn named(name: &str) -> Option<Meta> {
        Meta::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl View {
    pub(super) fn meta_attr(&self, ino: u64) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size: 0,
            perm: 0o444,
            uid: self.uid,
            gid: self.gid,
            mtime: SystemTime::now(),
        }
    }

    /// The generated content of a file in [`META_DIR`].
    pub(super) fn meta_bytes(&self, vm: &Vm, meta: Meta) -> Vec<u8> {
        let text = match meta {
            Meta::Status => match ops::status(vm.area.as_ref()) {
                Ok(report) => serde_json::to_string_pretty(&report),
                Err(e) => serde_json::to_string_pretty(&serde_json::json!({
                    "target": vm.area.location(),
                    "error": chain(&e),
                })),
            },
            Meta::View => {
                let mut st = lock(&vm.state);
                let read_only = self.read_only(vm, &mut st);
                let stage = st.stage.as_ref();
                serde_json::to_string_pretty(&serde_json::json!({
                    "name": vm.name,
                    "target": vm.target,
                    "backend": vm.area.kind().name(),
                    "writable": !read_only,
                    "mode": if read_only { "read-only: a VM holds the image" } else { "read-write" },
                    "staged": stage.is_some(),
                    "uncommitted_changes": stage.is_some_and(Stage::dirty),
                    "open_for_writing": stage.map_or(0, |s| s.writers),
                    "last_commit_error": st.last_error,
                    "last_run_started_by_view": st.last_run,
                }))
            }
        };
        let mut text = text.unwrap_or_default();
        text.push('\n');
        text.into_bytes()
    }
}
