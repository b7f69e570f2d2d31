//! `camelid mtbench answer`: FastChat's `gen_api_answer.py` against any endpoint.

use crate::client::{ChatClient, ChatError, Msg, API_ERROR_OUTPUT};
use crate::data::{append_jsonl, now, read_existing, Answer, Choice, Question};
use anyhow::{Context, Result};
use futures::stream::{self, StreamExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// Asks every turn in order, each with the earlier turns' questions and answers. A turn
/// the endpoint rejects (a context-length 400 on turn 2, no content) gets FastChat's
/// [`API_ERROR_OUTPUT`] and the next turn is asked after it, as FastChat's
/// `chat_completion_openai` does; the answer is complete, and judged. Returns the choices
/// and how many turns are [`API_ERROR_OUTPUT`].
pub async fn answer_question(
    client: &ChatClient,
    q: &Question,
    opts: &AnswerOptions,
) -> Result<(Vec<Choice>, usize), ChatError> {
    let temperature = temperature_for(q, opts.force_temperature);
    let mut choices = vec![];
    let mut rejected = 0;
    for index in 0..opts.num_choices {
        let mut msgs: Vec<Msg> = opts.system.iter().map(|s| Msg::new("system", s)).collect();
        let mut turns = vec![];
        for (t, text) in q.turns.iter().enumerate() {
            msgs.push(Msg::new("user", text));
            let out = match client.chat(&msgs, temperature, opts.max_tokens).await {
                Ok(out) => out,
                Err(ChatError::Rejected(e)) => {
                    tracing::warn!(
                        "question {} turn {}: {e}: recorded as {API_ERROR_OUTPUT}",
                        q.question_id,
                        t + 1
                    );
                    rejected += 1;
                    API_ERROR_OUTPUT.to_string()
                }
                Err(e) => return Err(e),
            };
            msgs.push(Msg::new("assistant", &out));
            turns.push(out);
        }
        choices.push(Choice { index, turns });
    }
    Ok((choices, rejected))
}

/// What an [`run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnswerSummary {
    /// Questions answered (turns recorded as [`API_ERROR_OUTPUT`] included).
    pub answered: usize,
    /// Questions that failed after the retries: not written, asked again by the next run.
    pub failed: usize,
    /// Turns the endpoint rejected, recorded as [`API_ERROR_OUTPUT`].
    pub rejected_turns: usize,
}

/// Answers the questions not yet in `opts.out`, then sorts the file (see
/// [`reorg_answer_file`]). A wrong key, model or endpoint stops the run with an error.
pub async fn run(
    client: &ChatClient,
    questions: &[Question],
    opts: &AnswerOptions,
) -> Result<AnswerSummary> {
    let r = answer_missing(client, questions, opts).await;
    // Sorted even after a stop: what was written stays, in order.
    let sorted = reorg_answer_file(&opts.out);
    let summary = r?;
    sorted?;
    Ok(summary)
}

async fn answer_missing(
    client: &ChatClient,
    questions: &[Question],
    opts: &AnswerOptions,
) -> Result<AnswerSummary> {
    let existing: Vec<Answer> = read_existing(&opts.out);
    // Answered questions are skipped; failed ones (error lines of older runs) are asked again,
    // and so are those answered with fewer choices than asked for now (`--num-choices` raised:
    // FastChat's run would answer them all).
    let done: std::collections::HashSet<u64> = existing
        .iter()
        .filter(|a| {
            a.model_id == opts.model_id
                && a.error.is_none()
                && a.choices.len() >= opts.num_choices.max(1)
        })
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
    let mut summary = AnswerSummary::default();
    while let Some((q, r)) = results.next().await {
        let choices = match r {
            Ok((c, rejected)) => {
                summary.answered += 1;
                summary.rejected_turns += rejected;
                c
            }
            // Every other question would fail the same way: stop rather than retry each.
            Err(ChatError::Fatal(e)) => {
                pb.abandon();
                anyhow::bail!("question {}: {e}", q.question_id)
            }
            // Not written: FastChat's judge reads every line of an answer file as an
            // answer. The question stays missing, so the next run asks it again.
            Err(e) => {
                summary.failed += 1;
                tracing::warn!(
                    "question {}: {e}: not answered (the next run asks it again)",
                    q.question_id
                );
                pb.inc(1);
                continue;
            }
        };
        let a = Answer {
            question_id: q.question_id,
            answer_id: answer_id(),
            model_id: opts.model_id.clone(),
            choices,
            tstamp: now(),
            error: None,
        };
        append_jsonl(&opts.out, &a)?;
        pb.inc(1);
    }
    pb.finish();
    Ok(summary)
}

/// FastChat's `reorg_answer_file`: one line per question (and model id), sorted by question
/// id: the last answer. Error lines (which older runs wrote for a failed question) are
/// dropped, so FastChat's judge can read the file. Lines are kept as written. A missing file is left missing; a file with a bad line (other
/// than a torn last one) is left alone, with a warning; a file already in order is not
/// written.
pub fn reorg_answer_file(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    // No line another run appends meanwhile is lost to the rename.
    let _writers = crate::data::lock_writers(path)?;
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut keep: BTreeMap<(u64, String), &str> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str::<Answer>(l) {
            Ok(a) if a.error.is_some() => {}
            // A later answer replaces an earlier one.
            Ok(a) => {
                keep.insert((a.question_id, a.model_id), l);
            }
            // Torn by a killed run: resuming redoes it.
            Err(_)
                if i + 1 == lines.len()
                    && !text.ends_with('\n')
                    && serde_json::from_str::<serde_json::Value>(l).is_err() => {}
            Err(e) => {
                tracing::warn!(
                    "{}: line {}: {e}: the file is left unsorted",
                    path.display(),
                    i + 1
                );
                return Ok(());
            }
        }
    }
    let sorted: String = keep.values().map(|l| format!("{l}\n")).collect();
    if sorted != text {
        // Written beside it, then renamed over it: a kill leaves one file or the other.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.sorting.{}", std::process::id()));
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::io::Write::write_all(&mut f, sorted.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rewrite while another run appends loses none of its lines (they share the lock).
    #[test]
    fn appends_during_rewrites_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let answer = |id: u64| Answer {
            question_id: id,
            answer_id: format!("a{id}"),
            model_id: "m".into(),
            choices: vec![],
            tstamp: 0.0,
            error: None,
        };
        let p = path.clone();
        let writer = std::thread::spawn(move || {
            for id in (0..300).rev() {
                append_jsonl(&p, &answer(id)).unwrap();
            }
        });
        while !writer.is_finished() {
            reorg_answer_file(&path).unwrap();
        }
        writer.join().unwrap();
        let got: Vec<Answer> = crate::data::read_jsonl(&path).unwrap();
        assert_eq!(got.len(), 300, "lines lost");
    }

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
