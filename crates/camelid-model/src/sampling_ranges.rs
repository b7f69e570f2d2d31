//! The values each sampling field takes, in one place: the API's request checks, the command
//! line's flags and a model's `generation_config.json` all read them (a field the CLI refused
//! but the API took, or the reverse, was a bug twice).

/// The values a sampling field takes: the API's checks, the command line's flags and a
/// model's `generation_config.json` share them.
#[derive(Debug, Clone, Copy)]
pub struct FieldRange {
    pub lo: f32,
    pub hi: f32,
    /// Whether `lo` itself is refused.
    pub lo_open: bool,
}

impl FieldRange {
    pub fn contains(&self, x: f32) -> bool {
        x.is_finite()
            && (if self.lo_open {
                x > self.lo
            } else {
                x >= self.lo
            })
            && x <= self.hi
    }

    /// The range as `[lo, hi]` or `(lo, hi]`.
    pub fn describe(&self) -> String {
        let open = if self.lo_open { "(" } else { "[" };
        format!("{open}{}, {}]", self.lo, self.hi)
    }
}

/// `[lo, hi]`.
const fn closed(lo: f32, hi: f32) -> FieldRange {
    FieldRange {
        lo,
        hi,
        lo_open: false,
    }
}

pub const TEMPERATURE: FieldRange = closed(0.0, 2.0);
/// 0 keeps the best token alone (OpenAI and llama.cpp take it as greedy).
pub const TOP_P: FieldRange = closed(0.0, 1.0);
pub const PENALTY: FieldRange = closed(-2.0, 2.0);
pub const MIN_P: FieldRange = closed(0.0, 1.0);
/// `(0, 100]`: a penalty of 0 would divide by zero.
pub const REPETITION_PENALTY: FieldRange = FieldRange {
    lo: 0.0,
    hi: 100.0,
    lo_open: true,
};
