//! `camelid mtbench answer`: FastChat's `gen_api_answer.py` against any endpoint.

use crate::client::{ChatClient, Msg};
use crate::data::{append_jsonl, now, read_existing, Answer, Choice, Question};
use anyhow::Result;
use futures::stream::{self, StreamExt};
use std::path::PathBuf;

/// FastChat's temperature by category (`common.py: temperature_config`).
pub fn category_temperature(category: &str) -> f64 {
    match category {
        "writing" | "roleplay" => 0.7,
        "extraction" | "math" | "coding" | "reasoning" => 0.0,
        "stem" | "humanities" => 0.1,
        "arena-hard-200" => 0.0,
        _ => 0.7,
    }
}

/// `--force-temperature` wins, then the question's `required_temperature`, then the category.
pub fn temperature_for(q: &Question, force: Option<f64>) -> f64 {
    force
        .or(q.required_temperature)
        .unwrap_or_else(|| category_temperature(&q.category))
}

pub struct AnswerOptions {
    pub out: PathBuf,
    pub max_tokens: usize,
    pub num_choices: usize,
    pub parallel: usize,
    pub force_temperature: Option<f64>,
    /// The id written to `model_id` (default: the endpoint model name).
    pub model_id: String,
    pub system: Option<String>,
}

fn answer_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Asks every turn in order, each with the earlier turns' questions and answers.
pub async fn answer_question(
    client: &ChatClient,
    q: &Question,
    opts: &AnswerOptions,
) -> Result<Vec<Choice>> {
    let temperature = temperature_for(q, opts.force_temperature);
    let mut choices = vec![];
    for index in 0..opts.num_choices {
        let mut msgs: Vec<Msg> = opts.system.iter().map(|s| Msg::new("system", s)).collect();
        let mut turns = vec![];
        for t in &q.turns {
            msgs.push(Msg::new("user", t));
            let out = client.chat(&msgs, temperature, opts.max_tokens).await?;
            msgs.push(Msg::new("assistant", &out));
            turns.push(out);
        }
        choices.push(Choice { index, turns });
    }
    Ok(choices)
}

/// Answers the questions not yet in `opts.out`; returns (answered, failed).
pub async fn run(
    client: &ChatClient,
    questions: &[Question],
    opts: &AnswerOptions,
) -> Result<(usize, usize)> {
    let existing: Vec<Answer> = read_existing(&opts.out);
    // Answered questions are skipped; failed ones (error lines) are tried again.
    let done: std::collections::HashSet<u64> = existing
        .iter()
        .filter(|a| a.model_id == opts.model_id && a.error.is_none())
        .map(|a| a.question_id)
        .collect();
    let todo: Vec<&Question> = questions
        .iter()
        .filter(|q| !done.contains(&q.question_id))
        .collect();
    let pb = crate::progress(todo.len() as u64, &format!("answer {}", opts.model_id));
    let mut results = stream::iter(todo)
        .map(|q| async move { (q, answer_question(client, q, opts).await) })
        .buffer_unordered(opts.parallel.max(1));
    let (mut ok, mut failed) = (0, 0);
    while let Some((q, r)) = results.next().await {
        let (choices, error) = match r {
            Ok(c) => {
                ok += 1;
                (c, None)
            }
            Err(e) => {
                failed += 1;
                (vec![], Some(e.to_string()))
            }
        };
        let a = Answer {
            question_id: q.question_id,
            answer_id: answer_id(),
            model_id: opts.model_id.clone(),
            choices,
            tstamp: now(),
            error,
        };
        append_jsonl(&opts.out, &a)?;
        pb.inc(1);
    }
    pb.finish();
    Ok((ok, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(cat: &str, req: Option<f64>) -> Question {
        Question {
            question_id: 1,
            category: cat.into(),
            turns: vec![],
            required_temperature: req,
        }
    }

    #[test]
    fn temperatures_follow_fastchat() {
        let table = [
            ("writing", 0.7),
            ("roleplay", 0.7),
            ("extraction", 0.0),
            ("math", 0.0),
            ("coding", 0.0),
            ("reasoning", 0.0),
            ("stem", 0.1),
            ("humanities", 0.1),
            ("other", 0.7),
        ];
        for (c, t) in table {
            assert_eq!(temperature_for(&q(c, None), None), t, "{c}");
        }
        assert_eq!(temperature_for(&q("math", Some(0.5)), None), 0.5);
        assert_eq!(temperature_for(&q("math", Some(0.5)), Some(0.9)), 0.9);
        // On the wire as FastChat sends them: 0.7, not an f32's 0.699999988079071.
        let sent = serde_json::json!({"temperature": temperature_for(&q("writing", None), None)});
        assert_eq!(sent.to_string(), r#"{"temperature":0.7}"#);
    }
}
