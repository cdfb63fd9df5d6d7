//! The one error type of the core. Every public function returns [`Result`]; the Python bindings
//! map each variant to its own exception class.

use thiserror::Error;

/// What can go wrong in the core, with a message a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// Arrays whose shapes or lengths do not fit together.
    #[error("shape error: {0}")]
    Shape(String),
    /// A call that needs at least one unit (g = 0).
    #[error("no units to explain: the number of units must be at least 1")]
    EmptyUnits,
    /// An id (unit index, token id, row index) outside its valid range.
    #[error("id out of range: {0}")]
    IdOutOfRange(String),
    /// An unknown name for a strategy, sampler, distance or granularity.
    #[error("unknown {kind} '{name}', expected one of: {expected}")]
    UnknownStrategy {
        kind: &'static str,
        name: String,
        expected: &'static str,
    },
    /// A numeric parameter outside its domain (negative, NaN, zero rows, ...).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// An output too large to allocate: its size overflows, exceeds `isize::MAX` bytes or the
    /// allocator refuses it (the request asks for more memory than the process can get).
    #[error("too large to allocate: {0}")]
    TooLarge(String),
}

/// Result of every fallible core function.
pub type Result<T> = std::result::Result<T, CoreError>;
