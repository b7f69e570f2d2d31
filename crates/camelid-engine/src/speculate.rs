//! Draft tokens for speculative decoding by prompt lookup (vLLM's `ngram` method): where the
//! sequence's last n tokens occurred before, the tokens that followed them there. The engine
//! runs a draft beside the token it decodes, as further positions of the same chunk, and
//! keeps the tokens its own sampling agrees with (`Engine::forward_and_sample`): the output is
//! exactly what decoding one token at a time gives, only sooner where the text repeats
//! itself (quoting, editing, summarising, code). No draft model: the lookup costs a scan of
//! the sequence, and a sequence with no repeat decodes as it would without.

/// Settings of the prompt-lookup proposer (vLLM's `--speculative-config` for `ngram`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramSpec {
    /// Draft tokens per step at most (`num_speculative_tokens`).
    pub tokens: usize,
    /// Shortest n-gram that may match (`prompt_lookup_min`).
    pub min_n: usize,
    /// Longest n-gram tried (`prompt_lookup_max`); the longest match wins.
    pub max_n: usize,
    /// No drafts while more sequences than this are running (`disable_by_batch_size`): a
    /// full batch already uses the multipliers that drafts would take.
    pub max_batch: Option<usize>,
}

impl NgramSpec {
    /// vLLM's rules: an n-gram length left out is the other one (5 when both are), and
    /// `1 ≤ min ≤ max`; at least one draft token.
    pub fn new(
        tokens: usize,
        min_n: Option<usize>,
        max_n: Option<usize>,
        max_batch: Option<usize>,
    ) -> Result<Self, String> {
        let (min_n, max_n) = match (min_n, max_n) {
            (None, None) => (5, 5),
            (Some(a), None) => (a, a),
            (None, Some(b)) => (b, b),
            (Some(a), Some(b)) => (a, b),
        };
        if tokens == 0 {
            return Err("num_speculative_tokens must be at least 1".into());
        }
        if min_n == 0 || min_n > max_n {
            return Err(format!(
                "prompt_lookup_min ({min_n}) must be at least 1 and at most prompt_lookup_max \
                 ({max_n})"
            ));
        }
        if max_batch == Some(0) {
            return Err("disable_by_batch_size must be at least 1".into());
        }
        Ok(Self {
            tokens,
            min_n,
            max_n,
            max_batch,
        })
    }

    /// Up to `room` (and [`Self::tokens`]) tokens that followed the latest earlier occurrence
    /// of the longest suffix of `seq` (between `min_n` and `max_n` tokens) that occurred
    /// before; empty when none did. One backward scan for the last token, then a short
    /// comparison at each place it occurs.
    pub fn propose(&self, seq: &[u32], room: usize) -> Vec<u32> {
        let room = room.min(self.tokens);
        let len = seq.len();
        if room == 0 || len <= self.min_n {
            return vec![];
        }
        let last = seq[len - 1];
        // (match length, index after the match)
        let mut best: Option<(usize, usize)> = None;
        for end in (1..len).rev() {
            if seq[end - 1] != last {
                continue;
            }
            let n = (1..=self.max_n.min(end))
                .take_while(|&t| seq[end - t] == seq[len - t])
                .count();
            if n >= self.min_n && best.is_none_or(|(b, _)| n > b) {
                best = Some((n, end));
                if n == self.max_n {
                    break;
                }
            }
        }
        best.map_or_else(Vec::new, |(_, end)| {
            seq[end..(end + room).min(len)].to_vec()
        })
    }

    /// Whether a step with `running` sequences drafts at all.
    pub fn drafts_at(&self, running: usize) -> bool {
        self.max_batch.is_none_or(|m| running <= m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tokens: usize, min_n: usize, max_n: usize) -> NgramSpec {
        NgramSpec::new(tokens, Some(min_n), Some(max_n), None).unwrap()
    }

    #[test]
    fn the_tokens_after_the_latest_longest_match_are_proposed() {
        // The suffix "0 8 9" occurred at 4..7 (followed by 5 6 0); "8 9" alone at 0..2 too.
        let s = [8, 9, 3, 4, 0, 8, 9, 5, 6, 0, 8, 9];
        assert_eq!(spec(3, 2, 3).propose(&s, 10), vec![5, 6, 0]);
        // A longer match beats a later, shorter one.
        let s = [1, 8, 9, 3, 4, 2, 8, 9, 5, 6, 1, 8, 9];
        assert_eq!(spec(2, 2, 3).propose(&s, 10), vec![3, 4]);
        // room and the configured count both cap the draft; the end of the sequence too.
        assert_eq!(spec(3, 2, 3).propose(&s, 1), vec![3]);
        let s = [5, 6, 7, 5, 6];
        assert_eq!(spec(4, 2, 2).propose(&s, 10), vec![7, 5, 6]);
    }

    #[test]
    fn a_run_proposes_its_own_continuation_and_short_matches_propose_nothing() {
        assert_eq!(spec(3, 2, 4).propose(&[4, 4, 4, 4], 10), vec![4]);
        assert_eq!(spec(3, 2, 2).propose(&[1, 4, 4, 4], 10), vec![4]);
        // Only the last token recurs: below min_n.
        assert!(spec(3, 2, 4).propose(&[1, 2, 3, 9, 3], 10).is_empty());
        assert_eq!(spec(3, 1, 4).propose(&[1, 2, 3, 9, 3], 10), vec![9, 3]);
        assert!(spec(3, 1, 1).propose(&[3], 10).is_empty());
        assert!(spec(3, 1, 1).propose(&[], 10).is_empty());
        assert!(spec(3, 1, 2).propose(&[1, 2, 1, 2], 0).is_empty());
    }

    #[test]
    fn settings_follow_vllms_defaults_and_checks() {
        let d = NgramSpec::new(4, None, None, None).unwrap();
        assert_eq!((d.min_n, d.max_n), (5, 5));
        let d = NgramSpec::new(4, None, Some(3), Some(8)).unwrap();
        assert_eq!((d.min_n, d.max_n, d.max_batch), (3, 3, Some(8)));
        assert!(d.drafts_at(8) && !d.drafts_at(9));
        assert!(NgramSpec::new(0, None, None, None).is_err());
        assert!(NgramSpec::new(4, Some(0), Some(2), None).is_err());
        assert!(NgramSpec::new(4, Some(3), Some(2), None).is_err());
        assert!(NgramSpec::new(4, None, None, Some(0)).is_err());
    }
}
