//! The process's allocator: the system's `malloc`, with a cheaper path for cache-line-aligned
//! blocks.
//!
//! tokio aligns a task's cell and a socket's readiness state (`ScheduledIo`) to 128 bytes, so
//! every connection asks for three such blocks (its task, the client socket's and the backend
//! socket's registration). `std::alloc::System` hands any alignment above 16 bytes to glibc's
//! `posix_memalign`, which carves an aligned chunk out of a larger one and frees the leading
//! and trailing pieces: about 630 instructions per call (callgrind, `cargo xtask bench
//! --instructions http-close`), plus the frees and consolidation of those pieces later; a
//! plain `malloc` of the same size costs a tenth of that. Here a block aligned to 32..=128
//! bytes is a plain `malloc` of `size + align` bytes, the returned address rounded up to the
//! alignment, and the `malloc`ed address kept in the word just below it, for `free`. The cost
//! is up to `align` bytes more per such block. Every other layout goes to `System` unchanged.

// The global allocator is `unsafe` by nature: the contract of `GlobalAlloc`, and raw pointers.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// What `malloc` guarantees on the 64-bit targets this runs on (glibc, musl: 16 bytes).
const MALLOC_ALIGN: usize = 16;
/// The largest alignment taken by the over-allocating path; above, `posix_memalign` wastes
/// less than rounding up by hand would.
const MAX_FAST_ALIGN: usize = 128;

/// The system allocator, with aligned blocks of 32..=128 bytes from plain `malloc`.
pub(crate) struct Alloc;

/// Whether a block of this layout takes the over-allocating path.
#[inline]
fn fast(layout: Layout) -> bool {
    layout.align() > MALLOC_ALIGN && layout.align() <= MAX_FAST_ALIGN
}

/// The layout of the `malloc`ed block behind an over-aligned one: `align` bytes more (room to
/// round up and to keep the `malloc`ed address), at `malloc`'s own alignment. `None` on
/// overflow.
#[inline]
fn outer(layout: Layout) -> Option<Layout> {
    let size = layout.size().checked_add(layout.align())?;
    Layout::from_size_align(size, MALLOC_ALIGN).ok()
}

// SAFETY: every block comes from `System` and goes back to it with the layout it was taken
// with: a fast block's `malloc`ed address and outer layout are both recovered from its own
// layout (the one `dealloc` and `realloc` receive, as `GlobalAlloc` requires) and from the
// word stored below it.
unsafe impl GlobalAlloc for Alloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !fast(layout) {
            // SAFETY: the caller's layout, passed on (non-zero size is the caller's duty).
            return unsafe { System.alloc(layout) };
        }
        let Some(outer) = outer(layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size (at least `align`).
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        // `base` is 16-aligned and `align` a larger power of two: rounding `base + 1` up to
        // `align` moves it by 16..=align bytes, so the word below the result is inside the
        // block, and `size` bytes from it end at most at `base + align + size`.
        let offset = layout.align() - (base as usize & (layout.align() - 1));
        // SAFETY: `offset <= align`, inside the block of `size + align` bytes.
        let ptr = unsafe { base.add(offset) };
        // SAFETY: `ptr - 8 >= base + 8`, 8-aligned (both 16-aligned or more), in the block.
        unsafe { ptr.cast::<*mut u8>().sub(1).write(base) };
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !fast(layout) {
            // SAFETY: taken from `System` with this layout (`alloc` above).
            return unsafe { System.dealloc(ptr, layout) };
        }
        // SAFETY: a fast block: `alloc` wrote the `malloc`ed address just below it.
        let base = unsafe { ptr.cast::<*mut u8>().sub(1).read() };
        // SAFETY: `alloc` could only return this block if `outer` was `Some`.
        let outer = unsafe { outer(layout).unwrap_unchecked() };
        // SAFETY: `base` came from `System.alloc(outer)`.
        unsafe { System.dealloc(base, outer) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !fast(layout) {
            // SAFETY: as in `alloc`.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: as in `alloc`.
        let ptr = unsafe { self.alloc(layout) };
        if !ptr.is_null() {
            // SAFETY: `size` bytes from `ptr` belong to the block.
            unsafe { ptr.write_bytes(0, layout.size()) };
        }
        ptr
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !fast(layout) {
            // SAFETY: a `System` block of this layout; the alignment stays the same.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a fast layout again (same alignment).
        let fresh = unsafe { self.alloc(new) };
        if !fresh.is_null() {
            // SAFETY: both blocks hold at least the smaller size; distinct blocks.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every alignment the fast path takes, and the ones around it, at sizes from one byte
    /// to past a page: the block is aligned, all of it writable and readable back (the word
    /// below a fast block must survive the block's own writes), and it goes back cleanly.
    #[test]
    fn blocks_are_aligned_writable_and_freed() {
        let a = Alloc;
        for align in [1, 8, 16, 32, 64, 128, 256, 4096] {
            for size in [1, 7, 16, 31, 100, 128, 129, 1000, 4097] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero size; freed with the same layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "{size}/{align}");
                    assert_eq!(p as usize % align, 0, "{size}/{align}");
                    for i in 0..size {
                        p.add(i).write(i as u8);
                    }
                    for i in 0..size {
                        assert_eq!(p.add(i).read(), i as u8, "{size}/{align} at {i}");
                    }
                    a.dealloc(p, layout);
                }
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero() {
        let a = Alloc;
        for align in [16, 64, 128, 256] {
            let layout = Layout::from_size_align(300, align).unwrap();
            // SAFETY: as above.
            unsafe {
                // Dirty a block of the same size first, so that reuse would show.
                let d = a.alloc(layout);
                d.write_bytes(0xa5, 300);
                a.dealloc(d, layout);
                let p = a.alloc_zeroed(layout);
                assert_eq!(p as usize % align, 0);
                assert!((0..300).all(|i| p.add(i).read() == 0), "align {align}");
                a.dealloc(p, layout);
            }
        }
    }

    /// Growing and shrinking keeps the bytes and the alignment.
    #[test]
    fn realloc_keeps_contents_and_alignment() {
        let a = Alloc;
        for align in [8, 16, 32, 128] {
            let layout = Layout::from_size_align(64, align).unwrap();
            // SAFETY: as above; each block is freed with its current layout.
            unsafe {
                let p = a.alloc(layout);
                for i in 0..64 {
                    p.add(i).write(i as u8);
                }
                let q = a.realloc(p, layout, 5000);
                assert_eq!(q as usize % align, 0);
                assert!((0..64).all(|i| q.add(i).read() == i as u8), "grown, align {align}");
                let grown = Layout::from_size_align(5000, align).unwrap();
                let r = a.realloc(q, grown, 10);
                assert_eq!(r as usize % align, 0);
                assert!((0..10).all(|i| r.add(i).read() == i as u8), "shrunk, align {align}");
                a.dealloc(r, Layout::from_size_align(10, align).unwrap());
            }
        }
    }

    /// A size that cannot grow by the alignment fails as an allocation failure (null), not
    /// as an overflow.
    #[test]
    fn oversized_fast_layouts_fail_with_null() {
        let layout = Layout::from_size_align(isize::MAX as usize - 255, 128).unwrap();
        // SAFETY: non-zero size; nothing to free.
        assert!(unsafe { Alloc.alloc(layout) }.is_null());
    }
}
