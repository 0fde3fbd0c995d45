//! Progress of a long example on stderr, shown only when stderr is a terminal ([`bar`]):
//! run in a pipe, a file or a CI log, the examples print nothing more than before.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps prefixed `what`, drawn on stderr when stderr is a terminal, and a
/// hidden one (every call on it does nothing) otherwise.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    bar_for(std::io::stderr().is_terminal(), len, what)
}

/// [`bar`] for a stderr that is (`terminal`) or is not a terminal.
pub fn bar_for(terminal: bool, len: u64, what: &str) -> ProgressBar {
    if !terminal {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .map_or_else(
            |_| ProgressStyle::default_bar(),
            |s| s.progress_chars("=> "),
        );
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_is_hidden_unless_stderr_is_a_terminal() {
        assert!(bar_for(false, 10, "records").is_hidden());
        let shown = bar_for(true, 10, "records");
        assert_eq!(shown.length(), Some(10));
        assert_eq!(shown.prefix(), "records");
    }
}
