//! The consistent-hash key of a request that names no session: a hash of its text's
//! first and last [`EDGE_BYTES`] and its length. Equal texts get equal keys however
//! the body splits them into pieces; conversations that share a long system prompt
//! still differ in their tail (the latest messages) and length, so they spread.
//!
//! Hashing all of a 4.6 KB text took 0.5 us, more than a decision's 200 ns budget, so
//! only the edges are hashed, and they are gathered while the text is walked: the
//! head is copied as it arrives, and only the pieces that may hold the tail are kept.

use super::text::TextSink;
use smallvec::SmallVec;
use xxhash_rust::xxh3::xxh3_64;

/// Bytes taken from each end of the text. Both edges and the 8-byte length make 232
/// bytes, inside xxh3's single-shot path for inputs up to 240 bytes (512-byte edges
/// took xxh3's long path: 50 ns more per decision).
pub const EDGE_BYTES: usize = 112;

/// Pieces kept inline for the tail; more spill to the heap (only when the last
/// [`EDGE_BYTES`] of a text are made of this many tiny pieces).
const TAIL_PIECES: usize = 16;

/// Buffers a policy keeps between requests, so gathering a key allocates nothing.
#[derive(Default)]
pub struct TextKeyBuffers {
    /// The head edge, then the tail edge and the length: the bytes hashed.
    edges: Vec<u8>,
    /// Pieces rendered for the moment (token ids), kept for the tail.
    rendered: Vec<u8>,
}

/// A piece of the text that may hold part of its tail.
#[derive(Clone, Copy)]
enum Piece<'a> {
    Body(&'a [u8]),
    Rendered { start: usize, len: usize },
}

impl<'a> Piece<'a> {
    fn bytes<'s>(self, rendered: &'s [u8]) -> &'s [u8]
    where
        'a: 's,
    {
        match self {
            Piece::Body(b) => b,
            Piece::Rendered { start, len } => &rendered[start..start + len],
        }
    }
}

/// A text key being gathered (see the module doc).
pub struct TextKey<'a, 'b> {
    buffers: &'b mut TextKeyBuffers,
    tail: SmallVec<[Piece<'a>; TAIL_PIECES]>,
    /// Bytes in `tail`.
    tail_len: usize,
    /// Bytes of the whole text so far.
    len: usize,
}

impl<'a, 'b> TextKey<'a, 'b> {
    pub fn new(buffers: &'b mut TextKeyBuffers) -> Self {
        buffers.edges.clear();
        buffers.rendered.clear();
        TextKey {
            buffers,
            tail: SmallVec::new(),
            tail_len: 0,
            len: 0,
        }
    }

    // Inlined: passed by pointer, the piece was reloaded wider than it was stored
    // (a store-forwarding stall per piece, a quarter of the decision).
    #[inline(always)]
    fn push(&mut self, piece: Piece<'a>) {
        let TextKeyBuffers { edges, rendered } = &mut *self.buffers;
        let bytes = piece.bytes(rendered);
        let n = bytes.len();
        if n == 0 {
            return;
        }
        if self.len < EDGE_BYTES {
            edges.extend_from_slice(&bytes[..(EDGE_BYTES - self.len).min(n)]);
        }
        self.len += n;
        self.tail_len += n;
        if let (Some(Piece::Rendered { start, len }), Piece::Rendered { start: s, .. }) =
            (self.tail.last_mut(), piece)
        {
            if *start + *len == s {
                *len += n; // token ids follow each other in `rendered`: one piece
                return;
            }
        }
        if self.tail.len() == TAIL_PIECES {
            self.drop_pieces_before_tail();
        }
        self.tail.push(piece);
    }

    /// Forgets leading pieces that cannot hold any of the last [`EDGE_BYTES`].
    fn drop_pieces_before_tail(&mut self) {
        let mut drop = 0;
        while drop < self.tail.len() {
            let n = self.tail[drop].bytes(&self.buffers.rendered).len();
            if self.tail_len - n < EDGE_BYTES {
                break;
            }
            self.tail_len -= n;
            drop += 1;
        }
        self.tail.drain(..drop);
    }

    /// The key: xxh3 of the head edge, the tail edge (the bytes after the head, at
    /// most [`EDGE_BYTES`]) and the length.
    pub fn finish(mut self) -> u64 {
        let tail_from = self.len.saturating_sub(EDGE_BYTES).max(EDGE_BYTES);
        let mut offset = self.len - self.tail_len;
        let tail = std::mem::take(&mut self.tail);
        let TextKeyBuffers { edges, rendered } = &mut *self.buffers;
        for piece in tail {
            let bytes = piece.bytes(rendered);
            let end = offset + bytes.len();
            if end > tail_from {
                edges.extend_from_slice(&bytes[tail_from.saturating_sub(offset)..]);
            }
            offset = end;
        }
        edges.extend_from_slice(&(self.len as u64).to_le_bytes());
        xxh3_64(edges)
    }
}

impl<'a> TextSink<'a> for TextKey<'a, '_> {
    fn push_str(&mut self, s: &'a str) {
        self.push(Piece::Body(s.as_bytes()));
    }
    fn push_rendered(&mut self, s: &str) {
        let start = self.buffers.rendered.len();
        self.buffers.rendered.extend_from_slice(s.as_bytes());
        self.push(Piece::Rendered {
            start,
            len: s.len(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(parts: &[&str]) -> u64 {
        let mut buffers = TextKeyBuffers::default();
        let mut k = TextKey::new(&mut buffers);
        for p in parts {
            k.push_str(p);
        }
        k.finish()
    }

    fn text(n: usize) -> String {
        (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
    }

    #[test]
    fn equal_texts_equal_keys_however_split() {
        let text = text(3000);
        let whole = key_of(&[&text]);
        for split in [1, 111, 112, 113, 1500, 2887, 2888, 2889, 2999] {
            assert_eq!(
                key_of(&[&text[..split], &text[split..]]),
                whole,
                "split {split}"
            );
        }
        // Many tiny pieces: the tail outgrows the inline pieces and is pruned.
        let pieces: Vec<&str> = (0..3000)
            .step_by(7)
            .map(|i| &text[i..(i + 7).min(3000)])
            .collect();
        assert_eq!(key_of(&pieces), whole);
        let mut other = text.clone();
        other.replace_range(2900..2901, "Z"); // differs only in the tail
        assert_ne!(key_of(&[&other]), whole);
        let mut other = text.clone();
        other.replace_range(100..101, "Z"); // differs only in the head
        assert_ne!(key_of(&[&other]), whole);
        assert_ne!(key_of(&[&text[..2999]]), whole);
    }

    #[test]
    fn short_texts_are_hashed_whole() {
        let t = text(150); // head 112, tail the 38 bytes after it
        assert_eq!(key_of(&[&t[..10], &t[10..]]), key_of(&[&t]));
        let mut other = t.clone();
        other.replace_range(140..141, "Z");
        assert_ne!(key_of(&[&other]), key_of(&[&t]));
        assert_ne!(key_of(&["ab"]), key_of(&["ba"]));
        assert_eq!(key_of(&[""]), key_of(&[]));
    }

    #[test]
    fn rendered_pieces_count_like_borrowed_ones() {
        let ids: String = (0..400).map(|i| format!("{i} ")).collect();
        let mut buffers = TextKeyBuffers::default();
        let mut k = TextKey::new(&mut buffers);
        for i in 0..400 {
            k.push_rendered(&format!("{i} "));
        }
        assert_eq!(k.finish(), key_of(&[&ids]));
    }
}
