//! Caps on the work and memory one request may ask for, checked on the parsed body before
//! anything is built per prompt or per choice (a 3 MB body could otherwise ask for hundreds
//! of GB: its stop lists copied into every sequence). A request over a cap is a 400 naming
//! the field and the limit. `camelid serve` sets them from its flags.

use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Prompts in one `/v1/completions` request (`prompt` as a list).
    pub max_prompts: usize,
    /// Sequences one request starts: prompts × `n`.
    pub max_sequences: usize,
    /// Inputs of one embeddings request (OpenAI allows 2048); they run `max_sequences` at a
    /// time.
    pub max_embedding_inputs: usize,
    /// Stop strings of one request (`stop`).
    pub max_stop_strings: usize,
    /// Bytes of one stop string.
    pub max_stop_string_bytes: usize,
    /// Entries of `stop_token_ids`.
    pub max_stop_token_ids: usize,
    /// Entries of `logit_bias`.
    pub max_logit_bias: usize,
    /// Messages of one chat request.
    pub max_messages: usize,
    /// Function definitions of one chat request (`tools`; OpenAI allows 128).
    pub max_tools: usize,
    /// Log-probability entries one response may carry: for its prompts (`echo` with
    /// `logprobs` k: prompt tokens × n × (k + 1)), and for its output where it is not
    /// streamed (n × `max_tokens` × (k + 1)). Such a response's JSON is built whole: 64
    /// prompts of 8 k tokens at k = 20 would be ~11 M entries, gigabytes of `serde_json`
    /// values.
    pub max_logprob_entries: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_prompts: 64,
            max_sequences: 64,
            max_embedding_inputs: 2048,
            max_stop_strings: 16,
            max_stop_string_bytes: 256 << 10,
            max_stop_token_ids: 1024,
            max_logit_bias: 1024,
            max_messages: 1024,
            max_tools: 128,
            // ~50 MB of JSON; lm-evaluation-harness's batches (logprobs 0–1) stay far below.
            max_logprob_entries: 1 << 21,
        }
    }
}

fn over(param: &str, what: &str, got: usize, limit: usize) -> ApiError {
    ApiError::invalid_param(
        param,
        format!("`{param}`: {got} {what}; at most {limit} are allowed"),
    )
}

impl RequestLimits {
    /// The stop lists and `logit_bias` of a request (counts and lengths only; their values
    /// are checked later, once).
    pub fn check_stops(
        &self,
        stop: &[String],
        stop_token_ids: usize,
        logit_bias: usize,
    ) -> Result<(), ApiError> {
        if stop.len() > self.max_stop_strings {
            return Err(over(
                "stop",
                "stop strings",
                stop.len(),
                self.max_stop_strings,
            ));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > self.max_stop_string_bytes) {
            return Err(ApiError::invalid_param(
                "stop",
                format!(
                    "`stop`: a stop string of {} bytes; at most {} bytes are allowed",
                    long.len(),
                    self.max_stop_string_bytes
                ),
            ));
        }
        if stop_token_ids > self.max_stop_token_ids {
            return Err(over(
                "stop_token_ids",
                "token ids",
                stop_token_ids,
                self.max_stop_token_ids,
            ));
        }
        if logit_bias > self.max_logit_bias {
            return Err(over(
                "logit_bias",
                "entries",
                logit_bias,
                self.max_logit_bias,
            ));
        }
        Ok(())
    }

    /// `prompts` prompts with `n` choices each.
    pub fn check_sequences(&self, prompts: usize, n: usize) -> Result<(), ApiError> {
        if prompts > self.max_prompts {
            return Err(over("prompt", "prompts", prompts, self.max_prompts));
        }
        let seqs = prompts.saturating_mul(n);
        if seqs > self.max_sequences {
            return Err(ApiError::invalid_param(
                "n",
                format!(
                    "{prompts} prompt(s) × n = {n} make {seqs} sequences; at most {} are allowed per request",
                    self.max_sequences
                ),
            ));
        }
        Ok(())
    }

    /// `echo` scoring: `prompt_tokens` tokens over all prompts, each echoed in `n` choices
    /// with `top` alternatives a position.
    pub fn check_prompt_logprobs(
        &self,
        prompt_tokens: usize,
        n: usize,
        top: usize,
    ) -> Result<(), ApiError> {
        let entries = prompt_tokens
            .saturating_mul(n)
            .saturating_mul(top.saturating_add(1));
        if entries > self.max_logprob_entries {
            return Err(ApiError::invalid_param(
                "logprobs",
                format!(
                    "`echo` with `logprobs` {top} over {prompt_tokens} prompt tokens × n = {n} \
                     makes {entries} log-probability entries; at most {} are allowed per \
                     request (send fewer or shorter prompts per request, or a smaller `logprobs`)",
                    self.max_logprob_entries
                ),
            ));
        }
        Ok(())
    }

    /// A response that is not streamed: up to `tokens` tokens over all its choices (n ×
    /// `max_tokens`, and an `echo`'s prompts), each with `top` alternatives.
    pub fn check_output_logprobs(
        &self,
        field: &str,
        tokens: usize,
        top: usize,
    ) -> Result<(), ApiError> {
        let entries = tokens.saturating_mul(top.saturating_add(1));
        if entries > self.max_logprob_entries {
            return Err(ApiError::invalid_param(
                field,
                format!(
                    "log-probabilities with {top} alternatives over up to {tokens} tokens (n × \
                     `max_tokens`, and any echoed prompts) make {entries} entries; at most {} are allowed \
                     in a response that is not streamed (stream it, or ask fewer tokens or \
                     alternatives)",
                    self.max_logprob_entries
                ),
            ));
        }
        Ok(())
    }

    pub fn check_messages(&self, messages: usize) -> Result<(), ApiError> {
        if messages > self.max_messages {
            return Err(over("messages", "messages", messages, self.max_messages));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_name_the_field() {
        let l = RequestLimits::default();
        let param = |r: Result<(), ApiError>| r.unwrap_err().param.unwrap();
        assert!(l
            .check_stops(&vec!["x".repeat(250_000); 16], 1024, 1024)
            .is_ok());
        assert_eq!(param(l.check_stops(&vec!["x".into(); 17], 0, 0)), "stop");
        assert_eq!(
            param(l.check_stops(&["x".repeat((256 << 10) + 1)], 0, 0)),
            "stop"
        );
        assert_eq!(param(l.check_stops(&[], 1025, 0)), "stop_token_ids");
        assert_eq!(param(l.check_stops(&[], 0, 1025)), "logit_bias");
        assert!(l.check_sequences(4, 16).is_ok());
        assert_eq!(param(l.check_sequences(65, 1)), "prompt");
        assert_eq!(param(l.check_sequences(5, 16)), "n");
        assert_eq!(param(l.check_messages(1025)), "messages");
        assert!(l.check_prompt_logprobs(64 * 2048, 1, 1).is_ok());
        assert!(l.check_prompt_logprobs(1 << 20, 1, 1).is_ok());
        assert_eq!(param(l.check_prompt_logprobs(64 * 8191, 1, 20)), "logprobs");
        assert_eq!(param(l.check_prompt_logprobs(1 << 20, 2, 1)), "logprobs");
        assert_eq!(
            param(l.check_prompt_logprobs(usize::MAX, usize::MAX, usize::MAX)),
            "logprobs"
        );
    }
}
