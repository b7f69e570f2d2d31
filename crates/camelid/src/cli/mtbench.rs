//! `camelid mtbench`: answer, judge and show MT-bench; judge agreement and position bias, and
//! the rename experiment's prompts (`rename-prompts`).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum MtbenchCommand {
    /// Answer the MT-bench questions (both turns) through an OpenAI-compatible endpoint.
    Answer(MtAnswerArgs),
    /// Grade answers with an LLM judge (single score, or pairwise with position swap).
    Judge(MtJudgeArgs),
    /// Print score or win-rate tables from a judgment file.
    Show(MtShowArgs),
    /// Agreement between judges (LLM judgment files, FastChat's human judgments): setups S1
    /// (ties count) and S2 (ties left out), per turn and overall, with vote counts.
    Agreement(MtAgreementArgs),
    /// Position bias of pairwise judges: consistent, biased toward first / second, error,
    /// per judge, category and turn.
    Bias(MtBiasArgs),
    /// The paper's "rename" experiment: writes a judge prompts file whose pairwise prompts
    /// call the assistants by other names (their verdicts `[[X]]`/`[[Y]]`), for `judge
    /// --judge-prompts`; compare the runs with `bias`.
    RenamePrompts(MtRenameArgs),
}

#[derive(Args)]
pub struct MtRenameArgs {
    /// FastChat's judge_prompts.jsonl.
    #[arg(long)]
    judge_prompts: PathBuf,
    /// The new names of the first-shown and second-shown assistant, `FIRST,SECOND`.
    #[arg(long, default_value = "X,Y")]
    names: String,
    /// Where to write the renamed prompts (JSON lines).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct MtAgreementArgs {
    /// Votes, `[NAME=]FILE` (repeatable): `mtbench judge` pairwise or single judgments
    /// (single scores compared pairwise: the higher wins, equal is a tie), or FastChat's
    /// human judgments (`question_id, model_a, model_b, winner, judge, turn`; `expert_*`
    /// voters are `human`). NAME names the file's judge (default: `MODEL-pair`,
    /// `MODEL-single` from the judgments).
    #[arg(long = "votes", required = true, value_parser = labelled)]
    votes: Vec<(Option<String>, PathBuf)>,
    /// markdown or json.
    #[arg(long, default_value = "markdown")]
    format: String,
}

#[derive(Args)]
pub struct MtBiasArgs {
    /// Pairwise judgments, `[NAME=]FILE` (repeatable; NAME labels a run, e.g. one judged
    /// with renamed-assistant `--judge-prompts`; default: the judge model).
    #[arg(long = "judgments", required = true, value_parser = labelled)]
    judgments: Vec<(Option<String>, PathBuf)>,
    /// question.jsonl, for the per-category rows.
    #[arg(long)]
    questions: Option<PathBuf>,
    /// markdown or json.
    #[arg(long, default_value = "markdown")]
    format: String,
}

/// `NAME=FILE` or `FILE` (a path with `=` in it needs the `NAME=` form).
fn labelled(s: &str) -> Result<(Option<String>, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((Some(name.to_string()), PathBuf::from(path)))
        }
        Some(_) => Err(format!("{s:?}: expected NAME=FILE or FILE")),
        None => Ok((None, PathBuf::from(s))),
    }
}

fn read(p: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// How requests are sent and retried (`mtbench answer` and `judge`).
#[derive(Args)]
pub struct ClientArgs {
    /// Retries of a request that failed for a passing reason (HTTP 408, 409, 429, 5xx, a
    /// connection error; a timeout is retried once), waiting as the server's Retry-After
    /// says, else 1 s, 2 s, 4 s, … (jittered), at most 60 s. A rejected request (400, 413,
    /// 422) is not retried; a wrong key, model or URL (401, 403, 404) stops the run.
    #[arg(long, default_value_t = 7)]
    retries: usize,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// The request field of the output budget: max_tokens, or max_completion_tokens (which
    /// OpenAI's reasoning models, o1/o3/o4-mini/gpt-5, want).
    #[arg(long, default_value = "max_tokens")]
    max_tokens_field: camelid_eval::client::MaxTokensField,
    /// Send no temperature (reasoning models reject any but their default).
    #[arg(long)]
    no_temperature: bool,
}

impl ClientArgs {
    fn client(
        &self,
        endpoint: &str,
        model: &str,
        api_key: Option<String>,
    ) -> Result<camelid_eval::client::ChatClient> {
        let mut c = camelid_eval::client::ChatClient::new(endpoint, model, api_key)?;
        c.retries = self.retries;
        c.timeout = std::time::Duration::from_secs(self.timeout);
        c.max_tokens_field = self.max_tokens_field;
        c.send_temperature = !self.no_temperature;
        Ok(c)
    }
}

#[derive(Args)]
pub struct MtAnswerArgs {
    /// Base URL of an OpenAI-compatible server: a bare host gets /v1/chat/completions
    /// (http://127.0.0.1:8000), a URL with a path /chat/completions after it
    /// (http://127.0.0.1:8000/v1, https://generativelanguage.googleapis.com/v1beta/openai/).
    #[arg(long)]
    endpoint: String,
    /// Model name sent to the endpoint.
    #[arg(long)]
    model: String,
    /// model_id written to the answers (default: --model).
    #[arg(long)]
    model_id: Option<String>,
    // A secret: --help names the variable, not its value.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// question.jsonl
    #[arg(long)]
    questions: PathBuf,
    /// Answer file (JSONL, appended to; questions already answered are skipped).
    #[arg(long)]
    out: PathBuf,
    /// Questions answered at once (concurrent requests to the endpoint).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Tokens an answer's turn may generate (FastChat's default, 1024).
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Answers per question (FastChat's `--num-choices`), each asked on its own.
    #[arg(long, default_value_t = 1)]
    num_choices: usize,
    /// Only the first N questions.
    #[arg(long)]
    first_n: Option<usize>,
    /// At most N questions of each category.
    #[arg(long)]
    per_category: Option<usize>,
    /// One temperature for every question (default: FastChat's per-category table).
    #[arg(long)]
    force_temperature: Option<f64>,
    /// A system message sent before the questions (default: none; the server's template
    /// applies the model's own default). FastChat's `gen_api_answer` sends its conversation
    /// template's: to match it on OpenAI's models pass `--system "You are a helpful
    /// assistant."`.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct MtJudgeArgs {
    /// Base URL of the judge's OpenAI-compatible server (as `answer --endpoint`).
    #[arg(long)]
    judge_endpoint: String,
    #[arg(long)]
    judge_model: String,
    // A secret: --help names the variable, not its value.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Answer files or folders of them (repeatable).
    #[arg(long, required = true, num_args = 1..)]
    answers: Vec<PathBuf>,
    /// single, pairwise-baseline or pairwise-all.
    #[arg(long, default_value = "single")]
    mode: String,
    #[arg(long)]
    baseline: Option<String>,
    /// Only these models (default: all in the answer files).
    #[arg(long, num_args = 1..)]
    models: Option<Vec<String>>,
    #[arg(long)]
    questions: PathBuf,
    #[arg(long)]
    judge_prompts: PathBuf,
    /// Reference answers (reference_answer/gpt-4.jsonl) for math, reasoning and coding.
    #[arg(long)]
    references: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Judgments asked at once (concurrent requests to the judge).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Judge output budget (FastChat uses 2048).
    #[arg(long, default_value_t = 2048)]
    judge_max_tokens: usize,
    /// Constrain verdicts to FastChat's format (an explanation ending in `[[A]]`/`[[B]]`/
    /// `[[C]]` or `[[rating]]`) through `structured_outputs.grammar`: for camelid or another
    /// server that takes vLLM's structured outputs. Its verdicts are not like for like with
    /// FastChat's: ratings are whole numbers 1–10 (FastChat takes `[[7.5]]`) and the
    /// explanation holds no `[` or `]` (a judge quoting code writes around them).
    #[arg(long)]
    constrain: bool,
    #[arg(long)]
    first_n: Option<usize>,
    #[arg(long)]
    per_category: Option<usize>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct MtShowArgs {
    /// A judgment file written by `mtbench judge`.
    #[arg(long)]
    judgments: PathBuf,
    /// single or pairwise (default: detected from the file).
    #[arg(long)]
    mode: Option<String>,
    /// question.jsonl, for the per-category columns.
    #[arg(long)]
    questions: Option<PathBuf>,
    /// text, markdown or json.
    #[arg(long, default_value = "text")]
    format: String,
    /// The judge model whose judgments to show (needed when several judged into the file).
    #[arg(long)]
    judge_model: Option<String>,
    /// Pairwise: only the games against this model, which gets no row (FastChat's
    /// `--baseline-model`).
    #[arg(long)]
    baseline: Option<String>,
}

pub fn run(c: MtbenchCommand) -> Result<()> {
    use camelid_eval::{answer, data, judge, show};
    let rt = tokio::runtime::Runtime::new()?;
    match c {
        MtbenchCommand::Answer(a) => {
            let qs = data::select_questions(
                data::load_questions(&a.questions)?,
                a.first_n,
                a.per_category,
            );
            let client = a.client.client(&a.endpoint, &a.model, a.api_key.clone())?;
            let opts = answer::AnswerOptions {
                out: a.out.clone(),
                max_tokens: a.max_tokens,
                num_choices: a.num_choices,
                parallel: a.parallel,
                force_temperature: a.force_temperature,
                model_id: a.model_id.clone().unwrap_or_else(|| a.model.clone()),
                system: a.system.clone(),
            };
            let done = rt.block_on(answer::run(&client, &qs, &opts))?;
            eprintln!(
                "answered {}, failed {} (failed ones are retried on the next run) -> {}",
                done.answered,
                done.failed,
                a.out.display()
            );
            if done.rejected_turns > 0 {
                eprintln!(
                    "{} turns the endpoint rejected are recorded as {} (as FastChat does)",
                    done.rejected_turns,
                    camelid_eval::client::API_ERROR_OUTPUT
                );
            }
            if done.failed > 0 && done.answered == 0 {
                anyhow::bail!("every question failed");
            }
        }
        MtbenchCommand::Judge(a) => {
            let qs = data::select_questions(
                data::load_questions(&a.questions)?,
                a.first_n,
                a.per_category,
            );
            let mode = match a.mode.as_str() {
                "single" => judge::Mode::Single,
                "pairwise-baseline" => judge::Mode::PairwiseBaseline,
                "pairwise-all" => judge::Mode::PairwiseAll,
                o => {
                    anyhow::bail!("unknown --mode {o:?} (single, pairwise-baseline, pairwise-all)")
                }
            };
            let references = match &a.references {
                Some(p) => data::read_jsonl::<data::Answer>(p)?
                    .into_iter()
                    .map(|r| (r.question_id, r))
                    .collect(),
                None => Default::default(),
            };
            let j = judge::Judge {
                client: a
                    .client
                    .client(&a.judge_endpoint, &a.judge_model, a.api_key.clone())?,
                prompts: data::load_judge_prompts(&a.judge_prompts)?,
                references,
                max_tokens: a.judge_max_tokens,
                constrain: a.constrain,
            };
            let answers = data::load_answers(&a.answers)?;
            let opts = judge::JudgeOptions {
                mode,
                baseline: a.baseline.clone(),
                out: a.out.clone(),
                parallel: a.parallel,
                models: a.models.clone(),
            };
            let (ok, errors) = rt.block_on(judge::run(&j, &qs, &answers, &opts))?;
            eprintln!(
                "judged {ok} matches, {errors} failed -> {}",
                a.out.display()
            );
        }
        MtbenchCommand::Agreement(a) => {
            use camelid_eval::agreement;
            let mut votes = vec![];
            for (label, p) in &a.votes {
                votes.extend(
                    agreement::read_votes(&read(p)?, label.as_deref())
                        .with_context(|| format!("in {}", p.display()))?,
                );
            }
            let rows = agreement::agreement(&votes)?;
            if rows.is_empty() {
                anyhow::bail!("no two votes on the same pair of answers to compare");
            }
            match a.format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
                "markdown" => print!("{}", agreement::render_agreement(&rows)),
                f => anyhow::bail!("unknown --format {f:?} (markdown, json)"),
            }
        }
        MtbenchCommand::Bias(a) => {
            use camelid_eval::bias;
            let mut judged = vec![];
            for (label, p) in &a.judgments {
                let js: Vec<data::PairJudgment> = data::read_jsonl(p)?;
                judged.push((label.clone().unwrap_or_default(), js));
            }
            let categories = match &a.questions {
                Some(p) => data::load_questions(p)?
                    .into_iter()
                    .map(|q| (q.question_id, q.category))
                    .collect(),
                None => Default::default(),
            };
            let rows = bias::position_bias(&judged, &categories);
            if rows.is_empty() {
                anyhow::bail!("no pairwise judgments in {:?}", a.judgments);
            }
            match a.format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
                "markdown" => print!("{}", bias::render_bias(&rows)),
                f => anyhow::bail!("unknown --format {f:?} (markdown, json)"),
            }
        }
        MtbenchCommand::RenamePrompts(a) => {
            let (first, second) = a
                .names
                .split_once(',')
                .map(|(f, s)| (f.trim(), s.trim()))
                .filter(|(f, s)| !f.is_empty() && !s.is_empty())
                .with_context(|| format!("--names {:?}: expected FIRST,SECOND", a.names))?;
            let prompts = data::load_judge_prompts(&a.judge_prompts)?;
            let mut text = String::new();
            for p in prompts.values() {
                let renamed = judge::rename_assistants(p, first, second);
                renamed.check_labels()?;
                text += &serde_json::to_string(&renamed)?;
                text.push('\n');
            }
            std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))?;
            eprintln!(
                "{} prompts, pairwise assistants renamed {first} and {second} -> {}",
                prompts.len(),
                a.out.display()
            );
        }
        MtbenchCommand::Show(a) => {
            let qs = match &a.questions {
                Some(p) => data::load_questions(p)?,
                None => vec![],
            };
            let first: Option<serde_json::Value> =
                data::read_existing::<serde_json::Value>(&a.judgments)
                    .into_iter()
                    .next();
            let pairwise = match a.mode.as_deref() {
                Some("pairwise") => true,
                Some("single") => false,
                Some(o) => anyhow::bail!("unknown --mode {o:?} (single, pairwise)"),
                None => first.as_ref().is_some_and(|v| v.get("g1_winner").is_some()),
            };
            let md = a.format == "markdown";
            if pairwise {
                let js: Vec<data::PairJudgment> = show::one_judge(
                    data::read_jsonl(&a.judgments)?,
                    |j: &data::PairJudgment| j.judge.0.as_str(),
                    a.judge_model.as_deref(),
                )?;
                if let Some(b) = a.baseline.as_deref() {
                    // A misspelled baseline would give an empty table and exit 0.
                    if !js.iter().any(|j| j.model_1 == b || j.model_2 == b) {
                        anyhow::bail!("--baseline {b:?}: no game in the judgments has this model");
                    }
                }
                let rows = show::pair_table(&js, a.baseline.as_deref());
                if a.format == "json" {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", show::render_pair(&rows, md));
                }
            } else {
                if a.baseline.is_some() {
                    anyhow::bail!("--baseline is for pairwise judgments");
                }
                let js: Vec<data::SingleJudgment> = show::one_judge(
                    data::read_jsonl(&a.judgments)?,
                    |j: &data::SingleJudgment| j.judge.0.as_str(),
                    a.judge_model.as_deref(),
                )?;
                let rows = show::single_table(&js, &qs);
                if a.format == "json" {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", show::render_single(&rows, md));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use camelid_eval::client::MaxTokensField;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: MtbenchCommand,
    }

    /// `answer` and `judge` build their client from the same flags.
    #[test]
    fn client_flags_reach_the_client() {
        let client = |args: &[&str]| {
            let base = match args[0] {
                "answer" => vec![
                    "answer",
                    "--endpoint",
                    "http://h:1/v1beta/openai/",
                    "--model",
                ],
                _ => vec![
                    "judge",
                    "--judge-endpoint",
                    "http://h:1/v1beta/openai/",
                    "--answers",
                    "a",
                    "--judge-prompts",
                    "p",
                    "--judge-model",
                ],
            };
            let argv = ["camelid"]
                .into_iter()
                .chain(base)
                .chain(["m", "--questions", "q", "--out", "o"])
                .chain(args[1..].iter().copied());
            match Cli::try_parse_from(argv)
                .map_err(|e| e.to_string())?
                .command
            {
                MtbenchCommand::Answer(a) => a.client.client(&a.endpoint, &a.model, None),
                MtbenchCommand::Judge(j) => {
                    j.client.client(&j.judge_endpoint, &j.judge_model, None)
                }
                _ => unreachable!(),
            }
            .map_err(|e| e.to_string())
        };
        for command in ["answer", "judge"] {
            let c = client(&[command]).unwrap();
            assert_eq!(c.url(), "http://h:1/v1beta/openai/chat/completions");
            assert_eq!(
                (c.retries, c.timeout, c.max_tokens_field, c.send_temperature),
                (7, Duration::from_secs(600), MaxTokensField::MaxTokens, true)
            );
            let c = client(&[
                command,
                "--retries",
                "2",
                "--timeout",
                "30",
                "--max-tokens-field",
                "max_completion_tokens",
                "--no-temperature",
            ])
            .unwrap();
            assert_eq!(
                (c.retries, c.timeout, c.max_tokens_field, c.send_temperature),
                (
                    2,
                    Duration::from_secs(30),
                    MaxTokensField::MaxCompletionTokens,
                    false
                )
            );
            let err = client(&[command, "--max-tokens-field", "max_new_tokens"])
                .err()
                .unwrap();
            assert!(err.contains("max_completion_tokens"), "{err}");
            assert!(client(&[command, "--timeout", "0"]).is_err());
        }
    }
}
