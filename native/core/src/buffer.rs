//! Zeroed buffers whose size comes from the caller, allocated fallibly.
//!
//! Every array the core allocates from a size it is given (rows, units, points, dimensions) goes
//! through [`zeroed`] or [`zeroed_array2`]: the element count is computed with checked
//! arithmetic, a buffer of more than `isize::MAX` bytes is refused, and so is one the allocator
//! cannot provide. A request too large therefore comes back as `None` (which each caller turns
//! into its documented error), never as an integer overflow, a panic, or the process abort of
//! Rust's default out-of-memory handler.
//!
//! The memory comes from `alloc_zeroed` (`calloc`), so a large buffer is zeroed lazily by the
//! operating system's fresh pages rather than by an extra pass over it. On Linux a buffer of
//! [`HUGE_PAGE_BYTES`] or more is also advised to use transparent huge pages, as numpy does for its
//! own arrays: writing a fresh 32 MiB output then takes 16 page faults instead of 8192, which on a
//! virtual machine is the difference between about 4 and 20 ms.

use std::alloc::{alloc_zeroed, Layout};

use ndarray::Array2;

mod sealed {
    pub trait Sealed {}
}

/// Element types for which the all-zero byte pattern is a valid value (`0`, `0.0`, `false`).
pub(crate) trait Zeroable: Copy + sealed::Sealed {}

macro_rules! zeroable {
    ($($t:ty),*) => {
        $(
            impl sealed::Sealed for $t {}
            impl Zeroable for $t {}
        )*
    };
}
zeroable!(u8, i64, usize, f32, f64, bool);

/// Buffers of at least this many bytes are advised to use transparent huge pages (numpy's
/// threshold for the same advice).
const HUGE_PAGE_BYTES: usize = 1 << 22;

/// `len` zeros of `T`, or `None` if `len * size_of::<T>()` exceeds `isize::MAX` bytes or the
/// allocator refuses.
pub(crate) fn zeroed<T: Zeroable>(len: usize) -> Option<Vec<T>> {
    let layout = Layout::array::<T>(len).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout has a non-zero size. On success the pointer is a fresh allocation of
    // the global allocator with exactly `layout` (size `len * size_of::<T>()`, alignment of `T`),
    // which is what `Box<[T]>::from_raw` requires for a slice of `len` elements. They are
    // initialised: every byte is 0, a valid value of each `Zeroable` type (the trait is sealed
    // and implemented only for integers, floats and `bool`).
    unsafe {
        let ptr = alloc_zeroed(layout);
        if ptr.is_null() {
            return None;
        }
        advise_huge_pages(ptr, layout.size());
        let slice = std::ptr::slice_from_raw_parts_mut(ptr.cast::<T>(), len);
        Some(Box::from_raw(slice).into_vec())
    }
}

/// Advises the kernel to back the whole pages of `[ptr, ptr + size)` with transparent huge pages
/// when `size >= HUGE_PAGE_BYTES`. Only advice: it changes neither the contents nor the validity
/// of the memory, and is ignored where huge pages are disabled.
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, size: usize) {
    const PAGE: usize = 4096;
    if size < HUGE_PAGE_BYTES {
        return;
    }
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize + size) & !(PAGE - 1);
    if end > start {
        // SAFETY: `[start, end)` lies inside a live allocation of `size` bytes at `ptr`, and
        // MADV_HUGEPAGE is advice that does not change the memory's contents or mapping. An error
        // (another page size, THP unsupported) leaves the memory as it was, so it is ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _size: usize) {}

/// A zeroed `(rows, cols)` array, or `None` if `rows * cols` overflows or [`zeroed`] refuses.
///
/// An empty array is refused too when its other dimension alone would be too large (ndarray
/// requires the product of the non-zero dimensions to be a valid size).
pub(crate) fn zeroed_array2<T: Zeroable>(rows: usize, cols: usize) -> Option<Array2<T>> {
    let nonzero = rows.max(1).checked_mul(cols.max(1))?;
    Layout::array::<T>(nonzero).ok()?;
    let data = zeroed(rows * cols)?;
    Some(Array2::from_shape_vec((rows, cols), data).expect("rows * cols elements"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_zero() {
        assert_eq!(zeroed::<u8>(5), Some(vec![0; 5]));
        assert_eq!(zeroed::<f64>(3), Some(vec![0.0; 3]));
        assert_eq!(zeroed::<bool>(2), Some(vec![false; 2]));
        assert_eq!(zeroed::<i64>(0), Some(Vec::new()));
        let a = zeroed_array2::<f32>(2, 3).unwrap();
        assert_eq!(a, Array2::<f32>::zeros((2, 3)));
        assert_eq!(zeroed_array2::<u8>(0, 7).unwrap().dim(), (0, 7));
    }

    #[test]
    fn impossible_sizes_are_refused() {
        assert_eq!(zeroed_array2::<u8>(usize::MAX, 2), None);
        assert_eq!(zeroed_array2::<u8>(0, usize::MAX), None);
        assert_eq!(zeroed_array2::<f32>(1 << 62, 0), None);
        assert_eq!(zeroed::<u8>(isize::MAX as usize + 1), None);
        assert_eq!(zeroed::<i64>(isize::MAX as usize / 4), None);
        // Representable but far beyond any machine's memory: the allocator refuses.
        assert_eq!(zeroed::<u8>(1 << 62), None);
    }
}
