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

pub const TEMPERATURE: FieldRange = FieldRange {
    lo: 0.0,
    hi: 2.0,
    lo_open: false,
};
/// 0 keeps the best token alone (OpenAI and llama.cpp take it as greedy).
pub const TOP_P: FieldRange = FieldRange {
    lo: 0.0,
    hi: 1.0,
    lo_open: false,
};
pub const PENALTY: FieldRange = FieldRange {
    lo: -2.0,
    hi: 2.0,
    lo_open: false,
};
pub const MIN_P: FieldRange = FieldRange {
    lo: 0.0,
    hi: 1.0,
    lo_open: false,
};
pub const REPETITION_PENALTY: FieldRange = FieldRange {
    lo: 0.0,
    hi: 100.0,
    lo_open: true,
};
