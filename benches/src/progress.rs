//! Progress of a long benchmark run on stderr, shown only when stderr is a terminal
//! ([`bar`]): a run whose stderr goes to a file or a CI log prints nothing more than
//! before. Lines printed through [`say!`](crate::say) while a bar is shown suspend it, so
//! the report on stdout is never interleaved with it on a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps (rounds) prefixed `what`, drawn on stderr when stderr is a
/// terminal, hidden otherwise. It becomes the bar [`say!`](crate::say) suspends; call
/// [`done`] when the work is over.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = bar_for(std::io::stderr().is_terminal(), len, what);
    crate::report::set_active_bar(Some(bar.clone()));
    bar
}

/// [`bar`] for a stderr that is (`terminal`) or is not a terminal; registers nothing.
pub fn bar_for(terminal: bool, len: u64, what: &str) -> ProgressBar {
    if !terminal {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, about {eta} left)",
    )
    .map_or_else(
        |_| ProgressStyle::default_bar(),
        |s| s.progress_chars("=> "),
    );
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(what.to_owned())
}

/// Clears `bar` from the terminal and stops [`say!`](crate::say) suspending it.
pub fn done(bar: &ProgressBar) {
    bar.finish_and_clear();
    crate::report::set_active_bar(None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_is_hidden_unless_stderr_is_a_terminal() {
        assert!(bar_for(false, 10, "rounds").is_hidden());
        let shown = bar_for(true, 10, "rounds");
        assert_eq!(shown.length(), Some(10));
        assert_eq!(shown.prefix(), "rounds");
    }
}
