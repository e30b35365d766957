//! The callback loop's steady-state hot path allocates nothing with raw callbacks: an echo server
//! (accept → multishot recv → send from caller memory → send completion) runs under a counting
//! global allocator, on both backends. Only allocations made by the loop thread while the echo is
//! in its steady state are counted (after a warm-up that lets every table reach its working size).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ringloop::callback::{EventLoop, OpHandle, Outcome, RawCallback, RunMode};
use ringloop::{BackendChoice, Options};

struct CountingAllocator;

thread_local! {
    /// Whether allocations on this thread are being counted.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations counted on this thread.
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator may run while this thread's locals are being torn down.
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards to the system allocator unchanged; the counting touches only
// const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded with the caller's layout (GlobalAlloc's contract).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as above; `ptr` came from this allocator, which is the system one.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const MESSAGE: usize = 64;
const WARMUP: usize = 2_000;
const MEASURED: usize = 20_000;
/// Each of the two buffers holds more than the client ever has in flight.
const BUFFER: usize = 64 * 1024;

/// The echo server's state, reached by the raw callbacks through their `data` word.
struct Server {
    accept: Option<OpHandle>,
    conn: Option<OwnedFd>,
    /// Two buffers: one being sent (its bytes must not change), one collecting what arrives
    /// meanwhile.
    buffers: [Vec<u8>; 2],
    collecting: usize,
    sending: bool,
    eof: bool,
    echoed: usize,
    measured_allocations: Option<usize>,
    closed: bool,
}

fn callback(func: ringloop::callback::RawFn, server: *mut Server) -> RawCallback {
    // SAFETY: every callback here only touches the `Server` behind `data`, which the test keeps
    // alive (boxed, freed after the loop) and uses on the loop thread only.
    unsafe { RawCallback::new(func, server.cast(), std::ptr::null_mut()) }
}

/// Sends the collecting buffer if nothing is in flight, or closes after EOF once all is echoed.
fn pump(lp: &mut EventLoop, server: &mut Server, this: *mut Server) {
    if server.sending {
        return;
    }
    let fd = server.conn.as_ref().map_or(-1, |c| c.as_raw_fd());
    if !server.buffers[server.collecting].is_empty() {
        let sending = server.collecting;
        server.collecting ^= 1;
        server.buffers[server.collecting].clear();
        server.sending = true;
        let buf = &server.buffers[sending];
        // SAFETY: the buffer is neither modified nor freed until `on_sent` runs (new bytes go to
        // the other buffer; `Server` outlives the loop).
        unsafe { lp.send_raw(fd, buf.as_ptr(), buf.len(), callback(on_sent, this)) }
            .expect("send_raw");
    } else if server.eof {
        if let Some(conn) = server.conn.take() {
            lp.close_raw(conn, callback(on_closed, this))
                .expect("close_raw");
        }
    }
}

unsafe fn on_accept(lp: &mut EventLoop, outcome: &Outcome<'_>, data: *mut c_void, _: *mut c_void) {
    let this = data as *mut Server;
    // SAFETY: `data` is the test's live `Server`; no other reference to it exists during a
    // callback.
    let server = unsafe { &mut *this };
    if outcome.result < 0 {
        return;
    }
    // SAFETY: an accept callback owns the new fd it is given.
    let conn = unsafe { OwnedFd::from_raw_fd(outcome.result) };
    let fd: RawFd = conn.as_raw_fd();
    server.conn = Some(conn);
    lp.recv_raw(fd, callback(on_recv, this)).expect("recv_raw");
    // One client only: stop accepting so the loop can finish once the echo is closed.
    if let Some(op) = server.accept.take() {
        lp.cancel(op);
    }
}

unsafe fn on_recv(lp: &mut EventLoop, outcome: &Outcome<'_>, data: *mut c_void, _: *mut c_void) {
    let this = data as *mut Server;
    // SAFETY: as in `on_accept`.
    let server = unsafe { &mut *this };
    if outcome.result > 0 {
        let collecting = &mut server.buffers[server.collecting];
        assert!(
            collecting.len() + outcome.bytes.len() <= BUFFER,
            "the test client keeps less in flight"
        );
        collecting.extend_from_slice(outcome.bytes);
    } else {
        assert!(outcome.result == 0, "recv failed: {}", outcome.result);
        server.eof = true;
    }
    pump(lp, server, this);
}

unsafe fn on_sent(lp: &mut EventLoop, outcome: &Outcome<'_>, data: *mut c_void, _: *mut c_void) {
    let this = data as *mut Server;
    // SAFETY: as in `on_accept`.
    let server = unsafe { &mut *this };
    assert!(outcome.result > 0, "send failed: {}", outcome.result);
    server.sending = false;
    let before = server.echoed / MESSAGE;
    server.echoed += outcome.result as usize;
    let after = server.echoed / MESSAGE;
    if before < WARMUP && after >= WARMUP {
        COUNT.with(|c| c.set(0));
        COUNTING.with(|c| c.set(true));
    }
    if before < WARMUP + MEASURED && after >= WARMUP + MEASURED {
        COUNTING.with(|c| c.set(false));
        server.measured_allocations = Some(COUNT.with(Cell::get));
    }
    pump(lp, server, this);
}

unsafe fn on_closed(_: &mut EventLoop, outcome: &Outcome<'_>, data: *mut c_void, _: *mut c_void) {
    // SAFETY: as in `on_accept`.
    let server = unsafe { &mut *(data as *mut Server) };
    assert_eq!(outcome.result, 0, "close failed");
    server.closed = true;
}

fn echo_allocates_nothing(choice: BackendChoice) {
    let opts = Options {
        backend: choice,
        honor_env: false,
        ..Options::default()
    };
    let mut lp = match EventLoop::new(&opts) {
        Ok(lp) => lp,
        Err(err)
            if choice == BackendChoice::IoUring
                && err.kind() == std::io::ErrorKind::Unsupported =>
        {
            eprintln!("SKIPPED: io_uring backend unavailable on this kernel: {err}");
            return;
        }
        Err(err) => panic!("{err}"),
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Box::into_raw(Box::new(Server {
        accept: None,
        conn: None,
        buffers: [Vec::with_capacity(BUFFER), Vec::with_capacity(BUFFER)],
        collecting: 0,
        sending: false,
        eof: false,
        echoed: 0,
        measured_allocations: None,
        closed: false,
    }));
    let op = lp
        .accept_raw(listener.as_raw_fd(), callback(on_accept, server))
        .unwrap();
    // SAFETY: the loop is not running, so no callback holds a reference to the server.
    unsafe { (*server).accept = Some(op) };

    let client = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut back = [0u8; MESSAGE];
        for i in 0..WARMUP + MEASURED + 100 {
            let msg: [u8; MESSAGE] = std::array::from_fn(|j| (i * 31 + j * 7) as u8);
            stream.write_all(&msg).unwrap();
            stream.read_exact(&mut back).unwrap();
            assert_eq!(back, msg, "round trip {i} echoed wrong bytes");
        }
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    });
    // Runs until the connection is closed and the accept cancelled: nothing else keeps it alive.
    assert!(!lp.run(RunMode::Default).unwrap());
    client.join().unwrap();
    // SAFETY: the loop has finished every op that referenced the server.
    let server = unsafe { Box::from_raw(server) };
    assert!(server.closed);
    assert_eq!(server.echoed, (WARMUP + MEASURED + 100) * MESSAGE);
    assert_eq!(
        server.measured_allocations,
        Some(0),
        "{} round trips on {:?} allocated on the loop thread",
        MEASURED,
        lp.backend()
    );
}

#[test]
fn uring_echo_with_raw_callbacks_allocates_nothing() {
    echo_allocates_nothing(BackendChoice::IoUring);
}

#[test]
fn epoll_echo_with_raw_callbacks_allocates_nothing() {
    echo_allocates_nothing(BackendChoice::Epoll);
}
