//! `camelid mtbench`: answer, judge and show MT-bench.

use anyhow::Result;
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
}

#[derive(Args)]
pub struct MtAnswerArgs {
    /// Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8000).
    #[arg(long)]
    endpoint: String,
    /// Model name sent to the endpoint.
    #[arg(long)]
    model: String,
    /// model_id written to the answers (default: --model).
    #[arg(long)]
    model_id: Option<String>,
    #[arg(long, env = "OPENAI_API_KEY")]
    api_key: Option<String>,
    /// question.jsonl
    #[arg(long)]
    questions: PathBuf,
    /// Answer file (JSONL, appended to; questions already answered are skipped).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
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
    force_temperature: Option<f32>,
    /// A system message sent before the questions (default: none; the server's template
    /// applies the model's own default).
    #[arg(long)]
    system: Option<String>,
}

#[derive(Args)]
pub struct MtJudgeArgs {
    #[arg(long)]
    judge_endpoint: String,
    #[arg(long)]
    judge_model: String,
    #[arg(long, env = "OPENAI_API_KEY")]
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
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Judge output budget (FastChat uses 2048).
    #[arg(long, default_value_t = 2048)]
    judge_max_tokens: usize,
    #[arg(long)]
    first_n: Option<usize>,
    #[arg(long)]
    per_category: Option<usize>,
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
}

pub fn run(c: MtbenchCommand) -> Result<()> {
    use camelid_eval::{answer, client::ChatClient, data, judge, show};
    let rt = tokio::runtime::Runtime::new()?;
    match c {
        MtbenchCommand::Answer(a) => {
            let qs = data::select_questions(
                data::load_questions(&a.questions)?,
                a.first_n,
                a.per_category,
            );
            let client = ChatClient::new(&a.endpoint, &a.model, a.api_key.clone())?;
            let opts = answer::AnswerOptions {
                out: a.out.clone(),
                max_tokens: a.max_tokens,
                num_choices: a.num_choices,
                parallel: a.parallel,
                force_temperature: a.force_temperature,
                model_id: a.model_id.clone().unwrap_or_else(|| a.model.clone()),
                system: a.system.clone(),
            };
            let (ok, failed) = rt.block_on(answer::run(&client, &qs, &opts))?;
            eprintln!(
                "answered {ok}, failed {failed} (failed ones are retried on the next run) -> {}",
                a.out.display()
            );
            if failed > 0 && ok == 0 {
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
                client: ChatClient::new(&a.judge_endpoint, &a.judge_model, a.api_key.clone())?,
                prompts: data::load_judge_prompts(&a.judge_prompts)?,
                references,
                max_tokens: a.judge_max_tokens,
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
                let rows = show::pair_table(&data::read_jsonl(&a.judgments)?);
                if a.format == "json" {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", show::render_pair(&rows, md));
                }
            } else {
                let rows = show::single_table(&data::read_jsonl(&a.judgments)?, &qs);
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
