//! The native live API, `/v1/ws`: one WebSocket per device, its session and its task.
//!
//! - `upgrade`: the upgrade request and its token; the socket goes to its person's thread.
//! - `task`: the socket's one task: client frames in (calls on the core), mail out.
//! - `session`: what the socket has been sent of each chat, and what it is sent next: every
//!   chat's messages once and in seq order, gaps filled from the history, resumes.
//! - `frames`: the protocol's frames (schema/ws.json), `io`: writing to the socket.
//! - `threads`: the threads sockets run on, each socket on its person's.

mod frames;
mod io;
mod session;
mod task;
mod threads;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

pub use self::threads::SocketThreads;
pub use self::upgrade::upgrade;
use crate::bus::Bus;
use crate::domain::Core;

/// The path of the socket.
pub const PATH: &str = "/v1/ws";

/// The live sockets of this node: what their sessions reach, and their limits.
#[derive(Debug)]
pub struct Sockets {
    core: Arc<Core>,
    bus: Bus,
    ws: WsLimits,
    /// The threads live sockets run on (the server keeps them until the database is
    /// closed: the store's tasks run on the first).
    threads: Arc<SocketThreads>,
}

impl Sockets {
    /// Sockets served with `threads`, and their heartbeat (until they are dropped).
    pub fn start(
        core: Arc<Core>,
        bus: Bus,
        ws: WsLimits,
        threads: Arc<SocketThreads>,
    ) -> Arc<Sockets> {
        let sockets = Arc::new(Sockets {
            core,
            bus,
            ws,
            threads,
        });
        tokio::spawn(heartbeat(Arc::downgrade(&sockets)));
        sockets
    }
}

/// Pings every live socket once per `ping_every`, a slice of them at a time, until the
/// sockets are dropped. A socket silent for longer than the idle timeout closes on its ping.
async fn heartbeat(app: std::sync::Weak<Sockets>) {
    const SLICES: u32 = 16;
    let Some(every) = app.upgrade().map(|a| a.ws.ping_every / SLICES) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for slice in (0..u64::from(SLICES)).cycle() {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        app.bus.hub().heartbeat(slice, u64::from(SLICES));
    }
}

/// Limits of live sockets.
#[derive(Debug, Clone)]
pub struct WsLimits {
    /// Frames queued for one socket before it counts as a slow consumer.
    pub queue: usize,
    /// Largest client frame, in bytes.
    pub max_frame_bytes: usize,
    /// Sustained client frames per second (bursts of twice that are allowed).
    pub frames_per_sec: u32,
    /// Interval of server pings.
    pub ping_every: Duration,
    /// A socket silent for this long (no frame, no pong) is dropped.
    pub idle_timeout: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            queue: 1024,
            max_frame_bytes: 64 * 1024,
            frames_per_sec: 50,
            ping_every: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}
