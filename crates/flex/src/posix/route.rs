//! What an entry point did with a call: [`Route::Served`] with the result, or
//! [`Route::Pass`] to the kernel with the reason ([`Pass`]).

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

/// Declares [`Pass`]: each reason with its text.
macro_rules! reasons {
    ($( $(#[$m:meta])* $name:ident => $why:literal, )*) => {
        /// Why a call goes to the kernel ([`Route::Pass`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Pass { $( $(#[$m])* $name, )* }

        impl Pass {
            pub const ALL: &'static [Pass] = &[$(Pass::$name),*];

            /// The reason in words.
            pub const fn why(self) -> &'static str {
                match self { $(Pass::$name => $why,)* }
            }
        }
    };
}

reasons! {
    /// The descriptor or path is not flex's (or the engine has not started).
    NotManaged => "not managed by flex",
    /// The description was handed back to the kernel (fork, exec).
    Demoted => "handed back to the kernel (fork, exec)",
    /// A coherent description (reachable through 0-2): the kernel holds the offset.
    Coherent => "coherent: the kernel holds the offset",
    /// A coherent description appending: the kernel descriptor carries O_APPEND.
    CoherentAppend => "coherent: the kernel appends",
    /// The preload library: an argument flex cannot read or does not parse (the kernel,
    /// or libc, judges it as it is).
    BadArgument => "an argument flex cannot read",
    /// The preload library: a libc call made from inside the engine.
    Reentered => "re-entered from the engine",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct() {
        for (i, p) in Pass::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
            assert!(Pass::ALL[..i].iter().all(|q| q.why() != p.why()));
        }
    }

    #[test]
    fn route_is_as_small_as_an_option() {
        assert!(core::mem::size_of::<Route<usize>>() <= core::mem::size_of::<Option<Res<usize>>>());
    }
}
