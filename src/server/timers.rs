//! The loop's timers: a min-heap of deadlines with O(log n) scheduling and O(1) cancellation.
//! A cancelled timer's heap entry is left in place and skipped when it comes up; once the dead
//! entries outnumber the live ones the heap is rebuilt, so the work per timer stays constant
//! however many are pending (15,000 connections waiting for a PROXY header, say).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// Names one scheduled timer, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

pub struct Timers<T> {
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    live: HashMap<TimerId, T>,
    next: u64,
    /// Heap entries examined by rebuilds, for the tests that bound it.
    #[cfg(test)]
    rebuilt: usize,
}

/// Dead entries tolerated beyond the live ones before a rebuild: small heaps are never rebuilt.
const SLACK: usize = 64;

impl<T> Timers<T> {
    pub fn new() -> Timers<T> {
        Timers {
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            next: 0,
            #[cfg(test)]
            rebuilt: 0,
        }
    }

    pub fn schedule(&mut self, at: Instant, timer: T) -> TimerId {
        let id = TimerId(self.next);
        self.next += 1;
        self.heap.push(Reverse((at, id)));
        self.live.insert(id, timer);
        id
    }

    /// Forgets a timer; one that has fired or was cancelled already is no error.
    pub fn cancel(&mut self, id: TimerId) {
        if self.live.remove(&id).is_some() && self.heap.len() > 2 * self.live.len() + SLACK {
            #[cfg(test)]
            {
                self.rebuilt += self.heap.len();
            }
            let live = &self.live;
            self.heap.retain(|Reverse((_, id))| live.contains_key(id));
        }
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_dead();
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// The earliest timer due at `now`, taken out.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        self.drop_dead();
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                let Reverse((_, id)) = self.heap.pop()?;
                self.live.remove(&id)
            }
            _ => None,
        }
    }

    fn drop_dead(&mut self) {
        while let Some(Reverse((_, id))) = self.heap.peek() {
            if self.live.contains_key(id) {
                return;
            }
            self.heap.pop();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_fire_in_order_and_cancelled_ones_never() {
        let start = Instant::now();
        let mut timers = Timers::new();
        let late = timers.schedule(start + Duration::from_secs(3), "late");
        timers.schedule(start + Duration::from_secs(1), "early");
        let cancelled = timers.schedule(start + Duration::from_secs(2), "cancelled");
        timers.cancel(cancelled);
        timers.cancel(cancelled);
        assert_eq!(timers.next_deadline(), Some(start + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(start), None);
        let later = start + Duration::from_secs(10);
        assert_eq!(timers.pop_due(later), Some("early"));
        assert_eq!(timers.pop_due(later), Some("late"));
        assert_eq!(timers.pop_due(later), None);
        timers.cancel(late);
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn the_timer_heap_is_swept_on_every_new_timer_once_many_are_pending() {
        // 15,000 pending deadlines (connections waiting for their PROXY header), then as many
        // again, each cancelled when its header arrives: the upkeep stays linear in the number
        // of timers instead of growing with the number pending.
        let start = Instant::now();
        let mut timers = Timers::new();
        for n in 0..15_000u64 {
            timers.schedule(start + Duration::from_secs(5 + n), n);
        }
        let more = 100_000u64;
        for n in 0..more {
            let id = timers.schedule(start + Duration::from_secs(5), n);
            timers.cancel(id);
        }
        assert_eq!(timers.len(), 15_000);
        assert!(
            timers.rebuilt <= 4 * more as usize,
            "rebuilds examined {} entries",
            timers.rebuilt
        );
    }
}
