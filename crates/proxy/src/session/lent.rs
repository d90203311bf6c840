//! Buffers lent to sessions while they work. A session between transactions holds none (an
//! idle client costs little memory), and a busy one does not allocate them afresh for every
//! transaction: it takes them from this thread's free list when a request arrives and gives
//! them back when it is answered, as PgBouncer lends its I/O buffers. A few sessions at a
//! time keep theirs between transactions instead ([`Linger`]): a busy client's next request
//! comes within moments, and lending and taking back four allocations per transaction cost
//! ~300 instructions (a twentieth of a select-only transaction's).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;

use super::Expect;

/// Every lent buffer has room for this much (a client read's chunk).
pub(super) const BUFFER: usize = 4096;
/// Bigger buffers (a long answer's) are freed rather than kept.
const KEPT_CAPACITY: usize = 32 * 1024;
/// The free list keeps at most this many bytes of buffers per thread.
const KEPT_BYTES: usize = 256 * 1024;
/// And at most this many queues of expected answers.
const KEPT_QUEUES: usize = 64;

/// At most this many sessions keep their buffers between transactions.
const LINGERING: usize = 16;
/// And only while these are no bigger than this together.
const LINGER_BYTES: usize = 16 * 1024;

/// Sessions keeping their buffers between transactions, of every thread.
static LINGER_COUNT: AtomicUsize = AtomicUsize::new(0);

/// A session's claim to keep its buffers between transactions: one of at most
/// [`LINGERING`], given up when its next request arrives or the session ends.
#[derive(Debug, Default)]
pub(super) struct Linger(bool);

impl Linger {
    /// Claims to keep buffers of `bytes` together; false: given back as usual.
    pub(super) fn start(&mut self, bytes: usize) -> bool {
        if self.0 {
            return true;
        }
        if bytes > LINGER_BYTES || LINGER_COUNT.load(Ordering::Relaxed) >= LINGERING {
            return false;
        }
        if LINGER_COUNT.fetch_add(1, Ordering::Relaxed) >= LINGERING {
            LINGER_COUNT.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.0 = true;
        true
    }

    pub(super) fn stop(&mut self) {
        if std::mem::take(&mut self.0) {
            LINGER_COUNT.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Default)]
struct Free {
    buffers: Vec<BytesMut>,
    bytes: usize,
    queues: Vec<VecDeque<Expect>>,
}

thread_local! {
    static FREE: RefCell<Free> = RefCell::default();
}

/// A buffer with room for [`BUFFER`] bytes at least.
pub(super) fn buffer() -> BytesMut {
    FREE.with(|f| f.borrow_mut().buffer())
}

/// Lends what a request needs to those of `buffers` and `queue` that hold nothing.
pub(super) fn lend(buffers: [&mut BytesMut; 2], queue: &mut VecDeque<Expect>) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        for b in buffers {
            if b.capacity() == 0 {
                *b = f.buffer();
            }
        }
        if queue.capacity() == 0 {
            *queue = f.queues.pop().unwrap_or_else(|| VecDeque::with_capacity(8));
        }
    })
}

/// Takes back the allocations of those of `buffers` and `queue` that are empty, leaving them
/// holding nothing (those not worth keeping are freed: too big, or shared with messages
/// still kept elsewhere).
pub(super) fn give_back(buffers: [&mut BytesMut; 3], queue: &mut VecDeque<Expect>) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        for b in buffers {
            if b.is_empty() && b.capacity() > 0 {
                f.keep(std::mem::take(b));
            }
        }
        if queue.is_empty() && queue.capacity() > 0 {
            let q = std::mem::take(queue);
            if q.capacity() <= 64 && f.queues.len() < KEPT_QUEUES {
                f.queues.push(q);
            }
        }
    })
}

impl Free {
    fn buffer(&mut self) -> BytesMut {
        match self.buffers.pop() {
            Some(b) => {
                self.bytes -= b.capacity();
                b
            }
            None => BytesMut::with_capacity(BUFFER),
        }
    }

    fn keep(&mut self, mut b: BytesMut) {
        if b.capacity() > KEPT_CAPACITY {
            return;
        }
        b.clear();
        if b.try_reclaim(BUFFER) && self.bytes + b.capacity() <= KEPT_BYTES {
            self.bytes += b.capacity();
            self.buffers.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn a_buffer_given_back_is_lent_again_without_allocating() {
        let mut b = buffer();
        b.put_slice(b"hello");
        let at = b.as_ptr();
        give_back(
            [&mut b, &mut BytesMut::new(), &mut BytesMut::new()],
            &mut VecDeque::new(),
        );
        assert_eq!(&b[..], b"hello", "a buffer with bytes still to go stays");
        let _ = b.split_to(5);
        give_back(
            [&mut b, &mut BytesMut::new(), &mut BytesMut::new()],
            &mut VecDeque::new(),
        );
        assert_eq!(
            b.capacity(),
            0,
            "the session holds nothing once it gave it back"
        );
        let again = buffer();
        assert_eq!(again.as_ptr(), at);
        assert!(again.is_empty() && again.capacity() >= BUFFER);
    }

    #[test]
    fn only_a_few_sessions_keep_their_buffers_and_only_small_ones() {
        let mut claims: Vec<Linger> = (0..LINGERING + 1).map(|_| Linger::default()).collect();
        assert!(!claims[0].start(LINGER_BYTES + 1), "too big");
        let granted = claims
            .iter_mut()
            .filter_map(|c| c.start(3 * BUFFER).then_some(()))
            .count();
        // Other tests' sessions may hold claims meanwhile: never more than the bound.
        assert!(granted <= LINGERING);
        let before = LINGER_COUNT.load(Ordering::Relaxed);
        let held = claims.iter().filter(|c| c.0).count();
        drop(claims);
        assert_eq!(
            LINGER_COUNT.load(Ordering::Relaxed),
            before - held,
            "given up when dropped"
        );
    }

    #[test]
    fn a_buffer_still_shared_with_a_kept_message_is_not_kept() {
        let mut b = buffer();
        b.put_slice(&[7u8; 100]);
        let kept = b.split_to(100).freeze();
        let rest = b.as_ptr();
        give_back(
            [&mut b, &mut BytesMut::new(), &mut BytesMut::new()],
            &mut VecDeque::new(),
        );
        assert_eq!(b.capacity(), 0);
        // Kept, it would come back with less room than a buffer has (its start is the
        // message's): it was freed instead, and a whole buffer is lent.
        let next = buffer();
        assert_ne!(next.as_ptr(), rest);
        assert!(next.capacity() >= BUFFER);
        assert_eq!(kept[..], [7u8; 100]);
    }
}
