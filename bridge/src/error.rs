//! The bridge's errors: each says what went wrong and what to do.

use crate::WireType;

/// Why a bridge call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// Zenoh refused a configuration value.
    #[error("Zenoh refused configuration `{key}` = {value}: {reason}; fix the value (see Zenoh's DEFAULT_CONFIG.json5 for the key's format)")]
    Config {
        /// The key.
        key: String,
        /// The JSON5 value given.
        value: String,
        /// Zenoh's reason.
        reason: String,
    },
    /// A Zenoh operation failed.
    #[error("could not {what} over Zenoh: {reason}; check the endpoints (is the port free, is the other side listening?)")]
    Zenoh {
        /// What the bridge was doing.
        what: String,
        /// Zenoh's reason.
        reason: String,
    },
    /// The key expression is not one Zenoh accepts.
    #[error("`{key}` is not a usable key expression ({reason}); use `/`-separated chunks without wildcards, for example `plant/stage2`")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Another export already serves the key.
    #[error("another export already serves `{key}` (in this process or another): export each inbox under its own key, or close the other export first")]
    KeyTaken {
        /// The key.
        key: String,
    },
    /// Nothing answered at the key in time.
    #[error("no export answered at `{key}` within {waited_ms} ms; start the receiving side first (Bridge::export) and check that the two sessions connect (same endpoint, multicast scouting is off), or raise LinkOptions::connect_timeout")]
    NoExport {
        /// The key.
        key: String,
        /// How long the link waited.
        waited_ms: u64,
    },
    /// The two ends of a link carry different message types.
    #[error("link to `{key}`: this side sends {local}, the export at `{key}` takes {remote}; use the same message type at both ends (or give both the same wire_name if the Rust paths differ)")]
    TypeMismatch {
        /// The key.
        key: String,
        /// What this side sends.
        local: WireType,
        /// What the export takes.
        remote: WireType,
    },
    /// A reply from the other side could not be read (another protocol version?).
    #[error("the export at `{key}` sent a reply this bridge cannot read; run the same gyre-zenoh version at both ends")]
    Protocol {
        /// The key.
        key: String,
    },
}

impl BridgeError {
    pub(crate) fn zenoh(what: &str, e: &dyn std::fmt::Display) -> Self {
        Self::Zenoh {
            what: what.to_owned(),
            reason: e.to_string(),
        }
    }
}
