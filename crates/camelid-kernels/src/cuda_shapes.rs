//! The CUDA attention's launch shapes: pure arithmetic, built (and tested) without the
//! `cuda` feature, so that any machine checks them.

/// The most context positions an attention split scores (`PARTITION` in attention.cu).
pub const PARTITION: usize = 512;

/// Positions each split of a `paged_attention` launch scores, for `span` positions a row
/// over `rows × q_heads` (row, head) pairs: the fewest that keep the launch at ~2 048 blocks
/// (all resident at once on an H100/H200's 132 SMs), at least 64 and at most [`PARTITION`]. A
/// block scores its positions serially, so a decode's few pairs (one row of 32 heads) want
/// many short splits; a long prompt's many rows want few (each split's partial output is
/// `head_dim` f32 a pair).
pub fn partition_for(span: usize, rows: usize, q_heads: usize) -> usize {
    (span * rows * q_heads)
        .div_ceil(2048)
        .next_power_of_two()
        .clamp(64, PARTITION)
}

/// Bytes of split partial outputs (each `head_dim` f32, a maximum and a sum) one launch
/// may hold.
pub const PARTIALS_BUDGET: usize = 256 << 20;

/// The budget [`rows_per_launch`] keeps to: [`PARTIALS_BUDGET`] unless a test set another.
static BUDGET: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(PARTIALS_BUDGET);

/// Sets the partial outputs' budget a launch keeps to, for every thread (tests: a small one
/// makes a few rows run in several launches, which give the same results by construction, so
/// other tests running meanwhile are not disturbed).
pub fn set_partials_budget(bytes: usize) {
    BUDGET.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// Rows one `paged_attention` launch takes: as many as keep their splits' partial outputs
/// within [`PARTIALS_BUDGET`] ([`set_partials_budget`]) (at least one, at most the grid's 65 535). A decode's rows fit
/// in one launch at any context; a prompt chunk of 2 048 rows at 131 072 positions (256
/// splits of 32 heads of 64) would otherwise hold 4.3 GB of them.
pub fn rows_per_launch(q_heads: usize, splits: usize, head_dim: usize) -> usize {
    let per_row = q_heads * splits * (head_dim + 2) * 4;
    let budget = BUDGET.load(std::sync::atomic::Ordering::Relaxed);
    (budget / per_row.max(1)).clamp(1, 65_535)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partial outputs stay within the budget at every shape, a decode batch of 64 rows
    /// runs in one launch even at 131 072 positions, and a long prompt chunk late in a long
    /// context is split into launches rather than held at once.
    #[test]
    fn launches_bound_the_partial_outputs() {
        for (span, rows, q_heads, head_dim) in [
            (131_072usize, 2048usize, 32usize, 64usize),
            (4096, 2048, 32, 128),
            (131_072, 64, 32, 64),
            (384, 1, 32, 128),
            (1 << 20, 1, 64, 256),
        ] {
            let splits = span.div_ceil(partition_for(span, rows, q_heads));
            let group = rows_per_launch(q_heads, splits, head_dim).min(rows);
            let bytes = group * q_heads * splits * (head_dim + 2) * 4;
            assert!(group >= 1, "{span} {rows}");
            assert!(
                bytes <= PARTIALS_BUDGET || group == 1,
                "{span} positions, {rows} rows: {bytes} bytes a launch"
            );
        }
        let decode = |span: usize| {
            let splits = span.div_ceil(partition_for(span, 64, 32));
            rows_per_launch(32, splits, 64) >= 64
        };
        assert!(decode(384) && decode(131_072));
        let splits = 131_072usize.div_ceil(partition_for(131_072, 2048, 32));
        assert_eq!(splits, 256);
        let group = rows_per_launch(32, splits, 64);
        assert!(group < 2048 && 2048usize.div_ceil(group) > 1, "{group}");
    }
}
