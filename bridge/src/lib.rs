//! # gyre-zenoh
//!
//! Routes between gyre runtimes in other processes or on other machines, over
//! [Zenoh](https://zenoh.io), with a local route's guarantees: nothing lost, nothing
//! written twice into a ring, backpressure instead of drops, drain across machines, and
//! a report that hands back what the other side never took.
//!
//! Two halves, one per side of a route:
//!
//! - [`Bridge::export`] publishes a kernel's inbox (any [`gyre::Sender`]: a kernel's, a
//!   pipeline's first stage's, on any backend) under a key expression, so that remote
//!   producers can send to it.
//! - [`Bridge::link`] takes a host [`gyre::Receiver`] (a kernel's or a pipeline's output,
//!   on any backend) and forwards everything it receives to a remote export: the remote
//!   kernel's inbox becomes the local kernel's route target.
//!
//! ```no_run
//! use gyre::{KernelSpec, Runtime};
//! use gyre_zenoh::{Bridge, BridgeConfig, ExportOptions, LinkOptions};
//! use std::time::Duration;
//!
//! // Process B: stages 2..n, exported under "demo/stage2".
//! let runtime = Runtime::builder().build()?;
//! let stage2 = runtime.launch(KernelSpec::<u64, u64>::new("stage2").cpu(|x, out| Ok(out.emit(x * 2)?)))?;
//! stage2.activate()?;
//! let bridge = Bridge::open(BridgeConfig::peer().listen("tcp/127.0.0.1:7447"))?;
//! let export = bridge.export::<u64>("demo/stage2", stage2.sender(), ExportOptions::default())?;
//!
//! // Process A: stage 1, whose output goes to process B.
//! let runtime = Runtime::builder().build()?;
//! let stage1 = runtime.launch(KernelSpec::<u64, u64>::new("stage1").cpu(|x, out| Ok(out.emit(x + 1)?)))?;
//! stage1.activate()?;
//! let bridge = Bridge::open(BridgeConfig::peer().connect("tcp/127.0.0.1:7447"))?;
//! let link = bridge.link("demo/stage2", stage1.receiver()?, LinkOptions::default())?;
//! stage1.send(1)?;
//! // Drain upstream first, then the link (flush, wait for acknowledgements), then B.
//! stage1.drain(Duration::from_secs(5))?;
//! let report = link.drain(Duration::from_secs(5));
//! assert!(report.undelivered.is_empty());
//! # drop(export);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## The protocol, in short
//!
//! Every link has a random id and numbers its messages `0, 1, 2…`. The export writes a
//! message into the kernel's inbox only if it is the next one it expects from that link
//! (duplicates are dropped, a gap is refused and re-sent), and acknowledges two
//! positions: *delivered* (written into the ring) and *consumed* (taken from the ring by
//! the kernel). The link keeps every message until it is consumed, so a receiving
//! process that dies loses nothing it had not yet taken: the link resends the rest to
//! its next incarnation. Credit is `consumed + window` with the window no larger than the
//! inbox ring: a link without credit stops reading from its receiver, so the upstream
//! kernel's output ring fills and the kernel stalls, counted as a stall, like a full
//! local ring. Nothing is ever dropped for lack of room. Full description, and what is
//! and is not guaranteed: `runtime/docs/SCALE_OUT.md`.
//!
//! Calls that talk to Zenoh ([`Bridge::open`], [`Bridge::export`], [`Bridge::link`],
//! [`Link::drain`]) block the calling thread until they are done (bounded by their
//! timeouts); they do their Zenoh work on a thread of their own, so they are safe (if
//! blocking) inside an async runtime of either tokio flavour. From async code, prefer
//! `spawn_blocking`.

mod error;
mod export;
mod link;
mod wire;

use std::time::Duration;

pub use error::BridgeError;
pub use export::{Export, ExportMetrics, ExportOptions, InboundLink};
pub use link::{Link, LinkHealth, LinkMetrics, LinkOptions, LinkReport};

/// Where a bridge's Zenoh session connects and listens.
///
/// Peer mode by default (no server to start); multicast scouting is off unless asked
/// for, so a bridge talks only to the endpoints it is given (tests use only
/// `tcp/127.0.0.1:PORT`). [`BridgeConfig::router`] connects to a `zenohd` router as a
/// client instead, for multi-host and NAT'd deployments.
#[derive(Clone, Debug, Default)]
pub struct BridgeConfig {
    client: bool,
    listen: Vec<String>,
    connect: Vec<String>,
    multicast_scouting: bool,
    extra: Vec<(String, String)>,
}

impl BridgeConfig {
    /// A peer: connects directly to the peers it is told of (and those listen for it).
    pub fn peer() -> Self {
        Self::default()
    }

    /// A client of the `zenohd` router at `endpoint` (for example `tcp/10.0.0.5:7447`):
    /// every message goes through the router.
    pub fn router(endpoint: impl Into<String>) -> Self {
        Self {
            client: true,
            connect: vec![endpoint.into()],
            ..Self::default()
        }
    }

    /// Listens on `endpoint` (for example `tcp/127.0.0.1:7447`).
    #[must_use]
    pub fn listen(mut self, endpoint: impl Into<String>) -> Self {
        self.listen.push(endpoint.into());
        self
    }

    /// Connects to `endpoint` (retried in the background until it answers).
    #[must_use]
    pub fn connect(mut self, endpoint: impl Into<String>) -> Self {
        self.connect.push(endpoint.into());
        self
    }

    /// Turns multicast scouting on or off (off by default).
    #[must_use]
    pub fn multicast_scouting(mut self, on: bool) -> Self {
        self.multicast_scouting = on;
        self
    }

    /// Sets any other Zenoh configuration key to a JSON5 value, for example
    /// `.set("transport/shared_memory/enabled", "true")`.
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, json5: impl Into<String>) -> Self {
        self.extra.push((key.into(), json5.into()));
        self
    }

    fn to_zenoh(&self) -> Result<zenoh::Config, BridgeError> {
        let mut config = zenoh::Config::default();
        let list = |v: &[String]| {
            let quoted: Vec<String> = v.iter().map(|e| format!("{e:?}")).collect();
            format!("[{}]", quoted.join(","))
        };
        let mut set = |key: &str, value: String| {
            config
                .insert_json5(key, &value)
                .map_err(|e| BridgeError::Config {
                    key: key.to_owned(),
                    value: value.clone(),
                    reason: e.to_string(),
                })
        };
        set(
            "mode",
            if self.client {
                "\"client\""
            } else {
                "\"peer\""
            }
            .to_owned(),
        )?;
        set(
            "scouting/multicast/enabled",
            self.multicast_scouting.to_string(),
        )?;
        set("listen/endpoints", list(&self.listen))?;
        set("connect/endpoints", list(&self.connect))?;
        for (key, value) in &self.extra {
            set(key, value.clone())?;
        }
        Ok(config)
    }
}

/// A Zenoh session that exports inboxes and links outputs. Cheap to share by reference;
/// every export and link runs on a thread of its own.
pub struct Bridge {
    /// `Some` until drop, which closes it off the caller's thread.
    session: Option<zenoh::Session>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("zid", &self.session().zid())
            .finish()
    }
}

impl Bridge {
    /// Opens a Zenoh session as `config` says.
    ///
    /// # Errors
    /// [`BridgeError::Config`] for a configuration Zenoh refuses, [`BridgeError::Zenoh`]
    /// when the session cannot open (for example the listen endpoint is taken).
    #[allow(clippy::needless_pass_by_value)] // `Bridge::open(BridgeConfig::peer()…)` reads best
    pub fn open(config: BridgeConfig) -> Result<Self, BridgeError> {
        use zenoh::Wait;
        let config = config.to_zenoh()?;
        let session = off_async(|| zenoh::open(config).wait())
            .map_err(|e| BridgeError::zenoh("open the session", &e))?;
        Ok(Self {
            session: Some(session),
        })
    }

    /// A bridge over a session the caller opened (any configuration).
    pub fn from_session(session: zenoh::Session) -> Self {
        Self {
            session: Some(session),
        }
    }

    /// The Zenoh session.
    pub fn session(&self) -> &zenoh::Session {
        self.session.as_ref().expect("held until drop")
    }

    /// Exports the inbox `sender` feeds under `key`: remote [`Link`]s to `key` send into
    /// it. The export acknowledges a message once the kernel took it from its inbox, so
    /// the kernel should be fed by this export alone: other producers into the same inbox
    /// make acknowledgements later (never earlier) than they could be.
    ///
    /// # Errors
    /// [`BridgeError::InvalidKey`] for a key Zenoh refuses; [`BridgeError::Zenoh`] when
    /// the subscriber or queryable cannot be declared.
    pub fn export<In: gyre::Message>(
        &self,
        key: &str,
        sender: gyre::Sender<In>,
        options: ExportOptions,
    ) -> Result<Export<In>, BridgeError> {
        off_async(|| export::start(self.session(), key, sender, options))
    }

    /// Forwards everything `receiver` receives to the export at `key`, waiting up to
    /// [`LinkOptions::connect_timeout`] for it to answer.
    ///
    /// The link has a thread of its own that reads the receiver and batches what it
    /// reads into frames. When the receiver is a CPU kernel's and the link is idle
    /// (nothing sent for 50 µs, fewer than 64 messages in flight), the kernel's emit
    /// sends the frame itself, from its handler's thread, instead of waking the link's
    /// thread: a message then does not wait for a thread to wake (tens of microseconds
    /// on a small machine). That send is a Zenoh `put`, which blocks only while the
    /// session's transmit queue is full. [`LinkMetrics::inline_frames`] counts them.
    ///
    /// # Errors
    /// [`BridgeError::NoExport`] when nothing answers at `key` in time;
    /// [`BridgeError::TypeMismatch`] when the export carries another message type.
    pub fn link<Out: gyre::Message>(
        &self,
        key: &str,
        receiver: gyre::Receiver<Out>,
        options: LinkOptions,
    ) -> Result<Link<Out>, BridgeError> {
        off_async(|| link::start(self.session(), key, receiver, options))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Closing a session waits on Zenoh's runtime, which an async caller's thread
        // must not do.
        let session = self.session.take();
        off_async(move || drop(session));
    }
}

/// Runs `f` on a thread of its own: Zenoh's blocking calls refuse to run on a thread
/// that drives an async runtime (tokio's current-thread flavour panics), and the
/// bridge's calls are blocking by design, so they never run on the caller's thread.
pub(crate) fn off_async<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// What a message type looks like on the wire: both ends of a link compare these when
/// the link is established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireType {
    /// The type's name: `std::any::type_name` unless [`LinkOptions::wire_name`] /
    /// [`ExportOptions::wire_name`] set one.
    pub name: String,
    /// Its size in bytes.
    pub size: u32,
    /// Its alignment in bytes.
    pub align: u32,
    /// A hash of the name, size and alignment.
    pub fingerprint: u64,
}

impl WireType {
    /// The wire type of `T` under its Rust type name.
    pub fn of<T: gyre::Message>() -> Self {
        Self::named::<T>(std::any::type_name::<T>())
    }

    /// The wire type of `T` under `name`.
    pub fn named<T: gyre::Message>(name: &str) -> Self {
        let size = std::mem::size_of::<T>() as u32;
        let align = std::mem::align_of::<T>() as u32;
        // FNV-1a, 64 bits: stable across builds and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name
            .bytes()
            .chain(size.to_le_bytes())
            .chain(align.to_le_bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self {
            name: name.to_owned(),
            size,
            align,
            fingerprint: h,
        }
    }
}

impl std::fmt::Display for WireType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` ({} bytes, align {}, fingerprint {:016x})",
            self.name, self.size, self.align, self.fingerprint
        )
    }
}

/// A random 64-bit id: link ids and export epochs (a process's next incarnation gets
/// another).
pub(crate) fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}
