//! A boxed future whose heap block is reused by the shard's next one.
//!
//! A client connection boxes the answering of each request (`server::connection`), so
//! that a connection waiting for its next request holds a small future; answering is
//! about 3 KiB of state, above what glibc's per-thread cache serves quickly, and a
//! fresh `Box` per request cost about 1% of a request's CPU in `perf`. Blocks freed
//! here wait for the next request of any connection of the shard instead.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks a shard keeps: one per request answered at once, up to a busy shard's
/// concurrency; past it blocks go back to the allocator.
pub const MAX_FREE_BLOCKS: usize = 256;

/// Free blocks with their layout; given back to the allocator when the shard ends.
struct FreeBlocks(Vec<(Layout, NonNull<u8>)>);

impl Drop for FreeBlocks {
    fn drop(&mut self) {
        for (layout, block) in self.0.drain(..) {
            // SAFETY: each block was allocated with its layout and holds no value.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

thread_local! {
    /// This shard's free blocks.
    static FREE: RefCell<FreeBlocks> = const { RefCell::new(FreeBlocks(Vec::new())) };
}

/// `F` on the heap, in a block taken from the shard's free ones when one fits.
pub struct Recycled<F> {
    ptr: NonNull<F>,
}

impl<F> Recycled<F> {
    pub fn new(future: F) -> Self {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // Never the case for an answer, but a zero-sized block cannot be allocated.
            let ptr = NonNull::<F>::dangling();
            // SAFETY: writing a zero-sized value through a dangling, aligned pointer.
            unsafe { ptr.as_ptr().write(future) };
            return Recycled { ptr };
        }
        let reused = FREE.with(|f| {
            let f = &mut f.borrow_mut().0;
            let i = f.iter().rposition(|(l, _)| *l == layout)?;
            Some(f.swap_remove(i).1)
        });
        let block = reused.unwrap_or_else(|| {
            // SAFETY: the layout has a non-zero size.
            NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout))
        });
        let ptr = block.cast::<F>();
        // SAFETY: the block is unused, sized and aligned for `F`.
        unsafe { ptr.as_ptr().write(future) };
        Recycled { ptr }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives at `ptr` until `drop` and is never moved from there.
        let future = unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) };
        future.poll(cx)
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the value was written in `new` and is dropped once, here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() == 0 {
            return;
        }
        let block = self.ptr.cast::<u8>();
        let kept = FREE.with(|f| {
            let f = &mut f.borrow_mut().0;
            (f.len() < MAX_FREE_BLOCKS)
                .then(|| f.push((layout, block)))
                .is_some()
        });
        if !kept {
            // SAFETY: allocated in `new` with this layout (or by an earlier `new`).
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_block_is_reused_and_its_value_dropped_once() {
        // One future type, as a connection's answers are.
        async fn answer(w: Option<Rc<()>>) -> [u64; 64] {
            let _w = w;
            [7u64; 64]
        }
        let witness = Rc::new(());
        let first_block = {
            let f = Recycled::new(answer(Some(witness.clone())));
            let block = f.ptr.cast::<u8>();
            assert_eq!(Rc::strong_count(&witness), 2);
            drop(f); // never polled: its captured value is still dropped
            block
        };
        assert_eq!(Rc::strong_count(&witness), 1);
        let f = Recycled::new(answer(None));
        assert_eq!(f.ptr.cast::<u8>(), first_block);
        let out = futures_lite::future::block_on(f);
        assert_eq!(out[63], 7);
    }
}
