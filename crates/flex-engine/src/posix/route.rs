//! What an entry point did with a call: [`Route::Served`] with the result, or
//! [`Route::Pass`] to the kernel with the reason ([`Pass`]). The reasons are also the
//! fallbacks the statistics count (`FLEX_STATS`'s `fallbacks`, by [`Pass::why`]).

use crate::sys::{Errno, Res};

/// The answer of an entry point. A `Pass` leaves the call to the caller, who makes the
/// system call untouched (the preload library a raw one); a `Served` result has the
/// kernel's errno semantics (the preload library turns `Err` into `-1` + `errno`).
#[must_use = "a Pass is a call the caller must make itself (the kernel's)"]
#[derive(Debug, PartialEq, Eq)]
pub enum Route<T> {
    Served(Res<T>),
    Pass(Pass),
}

impl<T> Route<T> {
    /// Served: failed with `e`.
    #[inline]
    pub fn err(e: Errno) -> Route<T> {
        Route::Served(Err(e))
    }

    #[inline]
    pub fn is_pass(&self) -> bool {
        matches!(self, Route::Pass(_))
    }

    /// The served value transformed; a pass stays a pass.
    #[inline]
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Route<U> {
        match self {
            Route::Served(r) => Route::Served(r.map(f)),
            Route::Pass(p) => Route::Pass(p),
        }
    }

    /// The served result, or the kernel's (`kernel` makes the call) for a pass.
    #[inline]
    pub fn or_kernel(self, kernel: impl FnOnce() -> Res<T>) -> Res<T> {
        match self {
            Route::Served(r) => r,
            Route::Pass(_) => kernel(),
        }
    }
}

/// Declares [`Pass`]: each reason with the text the statistics print for it.
macro_rules! reasons {
    ($( $(#[$m:meta])* $name:ident => $why:literal, )*) => {
        /// Why a call, or part of one, goes to the kernel. The first ones route a whole
        /// call ([`Route::Pass`]); the others are fallbacks inside a call flex serves or
        /// a file it leaves to the kernel, counted in `FLEX_STATS`'s `fallbacks` under
        /// [`Pass::why`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Pass { $( $(#[$m])* $name, )* }

        impl Pass {
            pub const ALL: &'static [Pass] = &[$(Pass::$name),*];

            /// The reason as the statistics print it.
            pub const fn why(self) -> &'static str {
                match self { $(Pass::$name => $why,)* }
            }

            /// The reason whose text is `why` (the texts must be distinct: FLEX_STATS
            /// keys its fallbacks by them).
            #[cfg(test)]
            pub fn from_why(why: &str) -> Option<Pass> {
                match why {
                    $($why => Some(Pass::$name),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    // Whole calls passed to the kernel (never counted as fallbacks).
    /// The descriptor or path is not flex's (or the engine has not started).
    NotManaged => "not managed by flex",
    /// The description was handed back to the kernel (fork, exec).
    Demoted => "handed back to the kernel (fork, exec)",
    /// A coherent description (reachable through 0-2): the kernel holds the offset.
    Coherent => "coherent: the kernel holds the offset",
    /// A coherent description appending: the kernel descriptor carries O_APPEND.
    CoherentAppend => "coherent: the kernel appends",
    /// An append the kernel places (nothing over-allocated): its own call, as issued.
    KernelAppend => "an append the kernel places",
    /// An fcntl command the kernel serves on a managed descriptor.
    KernelCommand => "a command the kernel serves",
    /// close_range with CLOSE_RANGE_CLOEXEC: it only marks descriptors.
    CloexecOnly => "close_range CLOEXEC only marks descriptors",
    /// close_range: the managed descriptors are forgotten, the kernel closes the range.
    Forgotten => "forgotten by flex: the kernel closes them",
    /// The preload library: an argument flex cannot read or does not parse (the kernel,
    /// or libc, judges it as it is).
    BadArgument => "an argument flex cannot read",
    /// The preload library: a libc call made from inside the engine.
    Reentered => "re-entered from the engine",

    // Fallbacks: files the kernel keeps at open.
    /// Opened lazily: the kernel serves it until its IO calls show a mapping could pay.
    Lazy => "lazy: the kernel serves it until its IO calls come to FLEX_ADOPT_AFTER",
    Fd012 => "descriptor 0-2",
    FstatFailed => "fstat failed",
    NotRegular => "not a regular file",
    NoReadWrite => "cannot open read-write to check for a crash-left trailer",
    OverAllocatedElsewhere => "over-allocated by another live process",
    RecoveryFailed => "recovery failed",
    Overlayfs => "overlayfs: a mapping goes stale when the file is copied up",
    Fuse => "FUSE: the page cache is not coherent across opens",
    NetworkFs => "network file system: close-to-open coherence",

    // Fallbacks: IO the kernel does for a managed file.
    MmapFailed => "mmap failed",
    Rwf2Flag => "preadv2/pwritev2 flag served by the kernel",
    ReadBeyondMapping => "read beyond mapping",
    FaultDuringRead => "fault during read",
    ReadOverHole => "read over a hole",
    LeaseBroken => "lease broken: another process opened the file",
    BeyondFastRange => "offset beyond fast range",
    CannotReserve => "cannot reserve space",
    CannotMap => "cannot map",
    WriteIntoHole => "write into a hole",
    FaultDuringWrite => "fault during write",

    // Fallbacks: failure-atomic mode.
    AtomicOpenRefused => "atomic: open refused (log error)",
    AtomicForkExec => "atomic: fork/exec hands the file to the kernel",
    AtomicReaderWhileWriting => "atomic: reader while another process writes",
    AtomicUntrustedLog => "atomic: untrusted log (not flex's, or another user's)",
    AtomicNoLogPlace => "atomic: no place for the log",
    AtomicSharedUndo => "atomic: shared with another opener (undo, in place)",
    AtomicReaderNoRecover => "atomic: reader cannot recover a log (no write permission)",
    AtomicGoingSharedFailed => "atomic: going shared failed (file refuses IO)",
    AtomicEarlyCommit => "atomic: early commit (log full)",
}

impl Pass {
    /// How many reasons there are (the statistics' counter array).
    pub const COUNT: usize = Pass::ALL.len();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_and_round_trip() {
        for (i, p) in Pass::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
            assert_eq!(Pass::from_why(p.why()), Some(*p));
        }
        assert_eq!(Pass::from_why("no such reason"), None);
    }

    #[test]
    fn route_is_as_small_as_an_option() {
        assert!(core::mem::size_of::<Route<usize>>() <= core::mem::size_of::<Option<Res<usize>>>());
    }
}
