//! Where a role's product lines go: stdout, optionally tagged with who said them.
//!
//! stdout is the product's output (tests and people read it); diagnostics go
//! to stderr through `log`. A closed stdout is not worth crashing a courier for,
//! so write errors are ignored.

use std::fmt::Display;
use std::io::Write;

/// A line printer for one role instance.
#[derive(Debug, Clone, Default)]
pub struct Console {
    tag: Option<String>,
}

impl Console {
    /// Plain lines on stdout, as a single vendor or driver prints them.
    pub fn stdout() -> Self {
        Console::default()
    }

    /// Lines tagged `[tag] `, for several roles sharing one terminal (the demo).
    pub fn tagged(tag: impl Into<String>) -> Self {
        Console {
            tag: Some(tag.into()),
        }
    }

    /// Prints one line.
    pub fn line(&self, text: impl Display) {
        let mut out = std::io::stdout().lock();
        let _ = match &self.tag {
            Some(tag) => writeln!(out, "[{tag}] {text}"),
            None => writeln!(out, "{text}"),
        };
    }
}
