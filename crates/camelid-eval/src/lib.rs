//! camelid-eval: MT-bench as FastChat runs it, against any OpenAI-compatible endpoint.
//!
//! - [`data`] — questions, answers, judge prompts, references, judgments (FastChat's JSONL)
//! - [`client`] — a small OpenAI chat client with retries
//! - [`answer`] — `mtbench answer`: two-turn answers, per-category temperatures, resumable
//! - [`judge`] — `mtbench judge`: prompt rendering, verdict parsing, position swap
//! - [`show`] — `mtbench show`: score and win-rate tables
//! - [`bench`] — `camelid bench`: load generation against any OpenAI-compatible server
//! - [`ratings`] — `arena ratings`: Bradley–Terry and online Elo from battles, bootstrap CIs
//! - [`agreement`] — `mtbench agreement`: judge–judge and judge–human agreement (S1/S2)
//! - [`bias`] — `mtbench bias`: position bias from swapped pairwise games
//! - [`style`] — `arena ratings --style-control`: Bradley–Terry with style covariates
//! - [`category`] — `arena ratings --category`/`--by-category`: ratings per battle category

pub mod agreement;
pub mod answer;
pub mod bench;
pub mod bias;
pub mod category;
pub mod client;
pub mod data;
pub mod judge;
pub mod ratings;
pub mod show;
pub mod style;

/// A progress bar on stderr with an ETA.
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} ({elapsed}, ETA {eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
