//! Protocol error codes (PROTOCOL.md "Errors"). Every handler returns `Result<T>` so bad input
//! becomes an error response, never a panic.

use std::fmt;

#[derive(Debug)]
pub struct AgentError {
    pub code: &'static str,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, AgentError>;

impl AgentError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        AgentError { code, message: message.into() }
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new("invalid_argument", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new("not_found", m)
    }
    pub fn exists(m: impl Into<String>) -> Self {
        Self::new("already_exists", m)
    }
    pub fn precondition(m: impl Into<String>) -> Self {
        Self::new("failed_precondition", m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new("internal", m)
    }
    pub fn timeout(m: impl Into<String>) -> Self {
        Self::new("timeout", m)
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// `.ctx("what")` turns any displayable error into an `internal` error with context.
pub trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T, E: fmt::Display> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| AgentError::internal(format!("{what}: {e}")))
    }
}
