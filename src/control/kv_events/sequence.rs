//! A source's sequence numbers: each live message carries the publisher's count, so
//! a lost message (ZMQ drops past its high-water mark) or a restarted publisher shows
//! as a jump. A gap is replayed from the publisher's replay socket when it has one;
//! otherwise, and after a restart, the source's blocks are dropped, since the index no
//! longer knows what the worker holds.

/// What to do with a live message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The next one (or the first): apply it.
    Apply,
    /// Messages from `from` on were missed: replay them (each through
    /// [`Sequence::replayed`]), then settle this one with [`Sequence::resume`].
    Gap { from: i64 },
    /// The publisher started counting again: drop the source's blocks, then apply.
    Restart,
    /// Already applied (it came in a replay): skip.
    Duplicate,
}

/// How a gap ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The replay brought the live message too: skip it.
    Covered,
    /// The replay filled the gap: apply the live message.
    Filled,
    /// Messages are still missing: drop the source's blocks, then apply.
    Unfilled,
}

/// The last sequence number applied, per source.
#[derive(Debug, Default)]
pub struct Sequence {
    last: Option<i64>,
    /// The highest number a replay delivered: live messages up to it, queued while the
    /// replay ran, are duplicates, not a restart.
    replayed_to: Option<i64>,
}

impl Sequence {
    /// Classifies a live message's number; records it unless it opens a gap or is a
    /// duplicate.
    pub fn live(&mut self, seq: i64) -> Step {
        if self.replayed_to.is_some_and(|r| seq <= r) {
            return Step::Duplicate;
        }
        let step = match self.last {
            None => Step::Apply,
            Some(last) if seq == last + 1 => Step::Apply,
            Some(last) if seq > last + 1 => return Step::Gap { from: last + 1 },
            Some(last) if seq == last => return Step::Duplicate,
            Some(_) => Step::Restart,
        };
        self.last = Some(seq);
        self.replayed_to = None;
        step
    }

    /// A replayed message arrived: whether to apply it (it is the next one).
    pub fn replayed(&mut self, seq: i64) -> bool {
        if self.last.is_some_and(|l| seq != l + 1) {
            return false;
        }
        self.last = Some(seq);
        self.replayed_to = Some(seq);
        true
    }

    /// The replay for a gap opened by live message `seq` is over.
    pub fn resume(&mut self, seq: i64) -> Resume {
        match self.last {
            Some(last) if seq <= last => Resume::Covered,
            Some(last) if seq == last + 1 => {
                self.last = Some(seq);
                Resume::Filled
            }
            _ => {
                self.last = Some(seq);
                Resume::Unfilled
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_gaps_restarts_and_duplicates() {
        let mut s = Sequence::default();
        assert_eq!(s.live(5), Step::Apply, "the first number may be anything");
        assert_eq!(s.live(6), Step::Apply);
        assert_eq!(s.live(6), Step::Duplicate);
        assert_eq!(s.live(9), Step::Gap { from: 7 });
        assert_eq!(s.resume(9), Resume::Unfilled, "no replay");
        assert_eq!(s.live(10), Step::Apply);
        assert_eq!(s.live(0), Step::Restart);
        assert_eq!(s.live(1), Step::Apply);
    }

    #[test]
    fn a_replay_fills_a_gap_and_queued_live_messages_are_skipped() {
        let mut s = Sequence::default();
        s.live(1);
        assert_eq!(s.live(4), Step::Gap { from: 2 });
        // The replay brings 2..=6 while live 5 and 6 wait; 9 is not the next one.
        for seq in 2..=6 {
            assert!(s.replayed(seq));
        }
        assert!(!s.replayed(9));
        assert_eq!(s.resume(4), Resume::Covered);
        assert_eq!(s.live(5), Step::Duplicate);
        assert_eq!(s.live(6), Step::Duplicate);
        assert_eq!(s.live(7), Step::Apply);
    }

    #[test]
    fn a_short_replay_leaves_the_gap_open() {
        let mut s = Sequence::default();
        s.live(1);
        assert_eq!(s.live(5), Step::Gap { from: 2 });
        assert!(s.replayed(2));
        assert_eq!(s.resume(5), Resume::Unfilled);
        assert_eq!(s.live(6), Step::Apply);
        let mut t = Sequence::default();
        t.live(1);
        t.live(3);
        t.replayed(2);
        assert_eq!(t.resume(3), Resume::Filled);
    }
}
