//! `camelid mtbench judge`: FastChat's `gen_judgment.py` with any OpenAI endpoint as judge.

use crate::client::{ChatClient, ChatError, Msg, API_ERROR_OUTPUT};
use crate::data::{
    append_jsonl, now, read_existing, Answer, JudgePrompt, PairJudgment, Question, SingleJudgment,
};
use anyhow::{anyhow, Result};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Categories judged against a reference answer (FastChat's `NEED_REF_CATS`).
pub const NEED_REF_CATS: &[&str] = &["math", "reasoning", "coding", "arena-hard-200"];

/// Python `str.format` for the judge templates: `{name}` is replaced, `{{`/`}}` are braces.
pub fn format_template(template: &str, vars: &BTreeMap<&str, &str>) -> Result<String> {
    let mut out = String::with_capacity(template.len() * 2);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let v = vars
                    .get(name.as_str())
                    .ok_or_else(|| anyhow!("template needs {{{name}}}, which this match lacks"))?;
                out.push_str(v);
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// FastChat's single-answer score: `[[x]]`, else `[x]`, else -1.
pub fn parse_score(judgment: &str) -> f64 {
    static P1: OnceLock<regex::Regex> = OnceLock::new();
    static P2: OnceLock<regex::Regex> = OnceLock::new();
    let p1 = P1.get_or_init(|| regex::Regex::new(r"\[\[(\d+\.?\d*)\]\]").unwrap());
    let p2 = P2.get_or_init(|| regex::Regex::new(r"\[(\d+\.?\d*)\]").unwrap());
    p1.captures(judgment)
        .or_else(|| p2.captures(judgment))
        .and_then(|c| c[1].parse::<f64>().ok())
        .unwrap_or(-1.0)
}

/// FastChat's pairwise verdict: "A", "B", "tie" or "error".
pub fn parse_verdict(judgment: &str) -> &'static str {
    parse_verdict_labelled(judgment, ["A", "B", "C"])
}

/// The pairwise verdict of a prompt whose assistants are called `labels` (first-shown,
/// second-shown, tie): "A" for the first-shown, "B" for the second, "tie" or "error",
/// checked in FastChat's order (`[[first]]`, then `[[second]]`, then `[[tie]]`).
pub fn parse_verdict_labelled(judgment: &str, labels: [&str; 3]) -> &'static str {
    let says = |l: &str| judgment.contains(&format!("[[{l}]]"));
    if says(labels[0]) {
        "A"
    } else if says(labels[1]) {
        "B"
    } else if says(labels[2]) {
        "tie"
    } else {
        "error"
    }
}

/// How a judge prompt's judgments give their verdict: its `output_format`, as FastChat's
/// `run_judge_single` and `run_judge_pair` branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictFormat<'a> {
    /// `[[rating]]`: a single answer's score ([`parse_score`]).
    Score,
    /// `[[A]]` (a renamed prompt's first label): the first-shown, second-shown or tie label
    /// ([`parse_verdict_labelled`]).
    Labels([&'a str; 3]),
    /// `[[rating_a,rating_b]]`: both answers scored ([`parse_two_scores`]).
    TwoScores,
}

/// The verdict format of prompt `p`; a format FastChat does not read is refused, as FastChat
/// raises on it (every judgment would otherwise be an "error").
pub fn verdict_format(p: &JudgePrompt) -> Result<VerdictFormat<'_>> {
    let labels = p.labels();
    match (p.kind.as_str(), p.output_format.as_str()) {
        ("single", "[[rating]]") => Ok(VerdictFormat::Score),
        ("pairwise", "[[rating_a,rating_b]]") => Ok(VerdictFormat::TwoScores),
        ("pairwise", f) if f == format!("[[{}]]", labels[0]) => Ok(VerdictFormat::Labels(labels)),
        (kind, f) => Err(anyhow!(
            "judge prompt {}: a {kind} prompt with output format {f:?}, which FastChat does not \
             read ([[rating]] for single prompts; [[A]] or [[rating_a,rating_b]] for pairwise)",
            p.name
        )),
    }
}

/// A pairwise judgment's verdict in `format`: "A" (the first-shown answer), "B", "tie" or
/// "error".
pub fn pair_verdict(format: VerdictFormat, judgment: &str) -> &'static str {
    match format {
        VerdictFormat::Labels(labels) => parse_verdict_labelled(judgment, labels),
        VerdictFormat::TwoScores => parse_two_scores(judgment),
        VerdictFormat::Score => "error",
    }
}

/// FastChat's `[[rating_a,rating_b]]` verdict: `[[a, b]]`, else `[a, b]`; scores within 0.1
/// of each other (its `TIE_DELTA`) are a tie, else the higher wins; none found is "error".
pub fn parse_two_scores(judgment: &str) -> &'static str {
    static P1: OnceLock<regex::Regex> = OnceLock::new();
    static P2: OnceLock<regex::Regex> = OnceLock::new();
    let p1 = P1.get_or_init(|| regex::Regex::new(r"\[\[(\d+\.?\d*),\s?(\d+\.?\d*)\]\]").unwrap());
    let p2 = P2.get_or_init(|| regex::Regex::new(r"\[(\d+\.?\d*),\s?(\d+\.?\d*)\]").unwrap());
    let Some(c) = p1.captures(judgment).or_else(|| p2.captures(judgment)) else {
        return "error";
    };
    match (c[1].parse::<f64>(), c[2].parse::<f64>()) {
        (Ok(a), Ok(b)) if (a - b).abs() <= 0.1 => "tie",
        (Ok(a), Ok(b)) if a > b => "A",
        (Ok(_), Ok(_)) => "B",
        _ => "error",
    }
}

/// The paper's "rename" experiment: a pairwise prompt with its assistants renamed from A and
/// B to `first` and `second` (`Assistant A` → `Assistant X`, `[[A]]` → `[[X]]`, in the system
/// prompt, the template and the output format), its verdict labels set to match. Prompts of
/// other types are returned as they are.
pub fn rename_assistants(p: &JudgePrompt, first: &str, second: &str) -> JudgePrompt {
    if p.kind != "pairwise" {
        return p.clone();
    }
    static NAME: OnceLock<regex::Regex> = OnceLock::new();
    let name = NAME
        .get_or_init(|| regex::Regex::new(r"\b([Aa]ssistant) ([AB])\b|\[\[([AB])\]\]").unwrap());
    let rename = |text: &str| {
        name.replace_all(text, |c: &regex::Captures| {
            let to = |l: &str| if l == "A" { first } else { second };
            match (c.get(1), c.get(2), c.get(3)) {
                (Some(word), Some(l), _) => format!("{} {}", word.as_str(), to(l.as_str())),
                (_, _, Some(l)) => format!("[[{}]]", to(l.as_str())),
                _ => c[0].to_string(),
            }
        })
        .into_owned()
    };
    let tie = p.labels()[2].to_string();
    JudgePrompt {
        system_prompt: rename(&p.system_prompt),
        prompt_template: rename(&p.prompt_template),
        output_format: rename(&p.output_format),
        verdict_labels: Some([first.to_string(), second.to_string(), tie]),
        ..p.clone()
    }
}

/// Game 1 shows (model_1, model_2) as (A, B); game 2 swaps them. Verdicts in model terms.
pub fn game_winners(g1: &str, g2: &str) -> (String, String) {
    let g1 = match g1 {
        "A" => "model_1",
        "B" => "model_2",
        o => o,
    };
    let g2 = match g2 {
        "A" => "model_2",
        "B" => "model_1",
        o => o,
    };
    (g1.to_string(), g2.to_string())
}

/// The final outcome of a swapped pair of games: inconsistent verdicts are a tie.
pub fn combine(g1_winner: &str, g2_winner: &str) -> &'static str {
    if g1_winner == "error" || g2_winner == "error" {
        "error"
    } else if g1_winner == "tie" || g1_winner != g2_winner {
        "tie"
    } else if g1_winner == "model_1" {
        "model_1"
    } else {
        "model_2"
    }
}

/// The turns of an answer's first choice (FastChat judges choice 0).
fn first_choice(a: &Answer) -> Result<&[String]> {
    a.choices
        .first()
        .map(|c| c.turns.as_slice())
        .ok_or_else(|| anyhow!("answer has no choices"))
}

/// The first turn: a question or answer with no turns is an error for its match, not a
/// panic of the whole run.
fn first<'a>(turns: &'a [String], what: &str) -> Result<&'a String> {
    turns.first().ok_or_else(|| anyhow!("{what} has no turns"))
}

/// The second turn, which multi-turn judge prompts need.
fn second<'a>(turns: &'a [String], what: &str) -> Result<&'a String> {
    turns.get(1).ok_or_else(|| anyhow!("{what} has one turn"))
}

/// The grammar (Lark, as llguidance and vLLM read it) of a constrained verdict: a free-text
/// explanation (no brackets, at most `explanation_tokens` tokens) ending in FastChat's
/// `[[A]]`/`[[B]]`/`[[C]]` (pairwise) or `[[rating]]`, 1 to 10 (single).
pub fn verdict_grammar(pairwise: bool, explanation_tokens: usize) -> String {
    verdict_grammar_labelled(pairwise.then_some(["A", "B", "C"]), explanation_tokens)
}

/// [`verdict_grammar`] with a pairwise prompt's own verdict labels (the rename experiment's
/// `[[X]]`/`[[Y]]`); `None` is a single-answer rating.
pub fn verdict_grammar_labelled(labels: Option<[&str; 3]>, explanation_tokens: usize) -> String {
    let format = labels.map_or(VerdictFormat::Score, VerdictFormat::Labels);
    verdict_grammar_for(format, explanation_tokens)
}

/// The grammar of a verdict in `format`, after an explanation as in [`verdict_grammar`].
pub fn verdict_grammar_for(format: VerdictFormat, explanation_tokens: usize) -> String {
    let verdict = match format {
        // A JSON string literal is a Lark string literal (same escapes).
        VerdictFormat::Labels(labels) => labels
            .iter()
            .map(|l| serde_json::Value::from(*l).to_string())
            .collect::<Vec<_>>()
            .join(" | "),
        VerdictFormat::Score => r#"/10|[1-9]/"#.to_string(),
        VerdictFormat::TwoScores => r#"/(10|[1-9]), (10|[1-9])/"#.to_string(),
    };
    format!(
        "start: explanation \"[[\" VERDICT \"]]\"\n\
         explanation[max_tokens={}]: /[^\\[\\]]*/\n\
         VERDICT: {verdict}\n",
        explanation_tokens.max(1)
    )
}

pub struct Judge {
    pub client: ChatClient,
    pub prompts: BTreeMap<String, JudgePrompt>,
    pub references: BTreeMap<u64, Answer>,
    pub max_tokens: usize,
    /// Send [`verdict_grammar`] as `structured_outputs.grammar`, so every verdict parses
    /// (for judges served by camelid or another server that takes vLLM's field).
    pub constrain: bool,
}

impl Judge {
    /// The prompt name for a question and turn, and whether it uses the reference.
    pub fn prompt_for(
        &self,
        q: &Question,
        turn: u8,
        pairwise: bool,
    ) -> Result<(&JudgePrompt, bool)> {
        let with_ref = NEED_REF_CATS.contains(&q.category.as_str())
            && self.references.contains_key(&q.question_id);
        let base = match (pairwise, with_ref) {
            (false, false) => "single-v1",
            (false, true) => "single-math-v1",
            (true, false) => "pair-v2",
            (true, true) => "pair-math-v1",
        };
        let name = if turn == 2 {
            format!("{base}-multi-turn")
        } else {
            base.to_string()
        };
        let p = self
            .prompts
            .get(&name)
            .ok_or_else(|| anyhow!("judge prompt {name} is not in the judge prompts file"))?;
        Ok((p, with_ref))
    }

    fn ref_vars<'a>(
        &'a self,
        q: &Question,
        with_ref: bool,
        vars: &mut BTreeMap<&'static str, &'a str>,
    ) {
        if with_ref {
            if let Some(r) = self
                .references
                .get(&q.question_id)
                .and_then(|r| r.choices.first())
            {
                if let Some(t) = r.turns.first() {
                    vars.insert("ref_answer_1", t);
                }
                if let Some(t) = r.turns.get(1) {
                    vars.insert("ref_answer_2", t);
                }
            }
        }
    }

    /// FastChat's `run_judge_single` user prompt.
    pub fn single_prompt(
        &self,
        q: &Question,
        a: &Answer,
        turn: u8,
    ) -> Result<(String, String, String)> {
        let (p, with_ref) = self.prompt_for(q, turn, false)?;
        let turns = first_choice(a)?;
        let mut vars: BTreeMap<&str, &str> = BTreeMap::new();
        if turn == 2 {
            vars.insert("question_1", first(&q.turns, "question")?);
            vars.insert("question_2", second(&q.turns, "question")?);
            vars.insert("answer_1", first(turns, "answer")?);
            vars.insert("answer_2", second(turns, "answer")?);
        } else {
            vars.insert("question", first(&q.turns, "question")?);
            vars.insert("answer", first(turns, "answer")?);
        }
        self.ref_vars(q, with_ref, &mut vars);
        Ok((
            p.name.clone(),
            p.system_prompt.clone(),
            format_template(&p.prompt_template, &vars)?,
        ))
    }

    /// FastChat's `run_judge_pair` user prompt, `a` shown as assistant A.
    pub fn pair_prompt(
        &self,
        q: &Question,
        a: &Answer,
        b: &Answer,
        turn: u8,
    ) -> Result<(String, String, String)> {
        let (p, with_ref) = self.prompt_for(q, turn, true)?;
        let ta = first_choice(a)?;
        let tb = first_choice(b)?;
        let mut vars: BTreeMap<&str, &str> = BTreeMap::new();
        if turn == 2 {
            vars.insert("question_1", first(&q.turns, "question")?);
            vars.insert("question_2", second(&q.turns, "question")?);
            vars.insert("answer_a_1", first(ta, "answer")?);
            vars.insert("answer_b_1", first(tb, "answer")?);
            vars.insert("answer_a_2", second(ta, "answer")?);
            vars.insert("answer_b_2", second(tb, "answer")?);
        } else {
            vars.insert("question", first(&q.turns, "question")?);
            vars.insert("answer_a", first(ta, "answer")?);
            vars.insert("answer_b", first(tb, "answer")?);
        }
        self.ref_vars(q, with_ref, &mut vars);
        Ok((
            p.name.clone(),
            p.system_prompt.clone(),
            format_template(&p.prompt_template, &vars)?,
        ))
    }

    /// `labels`: a pairwise prompt's verdict labels; `None` for a single-answer rating.
    async fn ask(&self, system: &str, user: &str, format: VerdictFormat<'_>) -> Result<String> {
        let msgs = [Msg::new("system", system), Msg::new("user", user)];
        let extra = if self.constrain {
            // Room for the verdict's own few tokens after the explanation.
            let explanation = self.max_tokens.saturating_sub(16);
            serde_json::json!({"structured_outputs": {"grammar": verdict_grammar_for(format, explanation)}})
        } else {
            serde_json::Value::Null
        };
        match self
            .client
            .chat_with(&msgs, 0.0, self.max_tokens, &extra)
            .await
        {
            // FastChat records a judgment the API will not give as its `API_ERROR_OUTPUT`
            // (score -1, verdict "error", left out of the tables), so the match is done.
            Err(ChatError::Rejected(e)) => {
                tracing::warn!("{e}: judgment recorded as {API_ERROR_OUTPUT}");
                Ok(API_ERROR_OUTPUT.to_string())
            }
            r => Ok(r?),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    PairwiseBaseline,
    PairwiseAll,
}

pub struct JudgeOptions {
    pub mode: Mode,
    pub baseline: Option<String>,
    pub out: PathBuf,
    pub parallel: usize,
    /// Only these models (default: every model with answers).
    pub models: Option<Vec<String>>,
}

/// FastChat's `check_data`, before any judge call: every question of a reference category
/// has its reference answer (judged without one, 30 of the 80 questions would get another
/// prompt), and every model named has an answer to every question (a model judged on fewer
/// questions than another would not be compared like for like).
fn check_inputs(
    judge: &Judge,
    questions: &[Question],
    answers: &BTreeMap<String, BTreeMap<u64, Answer>>,
    models: &[String],
    opts: &JudgeOptions,
) -> Result<()> {
    let first_few = |ids: &[u64]| {
        let shown: Vec<String> = ids.iter().take(5).map(u64::to_string).collect();
        let more = if ids.len() > 5 { ", …" } else { "" };
        format!("{}{more}", shown.join(", "))
    };
    let no_ref: Vec<u64> = questions
        .iter()
        .filter(|q| NEED_REF_CATS.contains(&q.category.as_str()))
        .filter(|q| !judge.references.contains_key(&q.question_id))
        .map(|q| q.question_id)
        .collect();
    if !no_ref.is_empty() {
        anyhow::bail!(
            "{} questions of the math, reasoning and coding categories have no reference answer \
             (questions {}); they are judged against one, as FastChat does: pass --references \
             (FastChat's llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl)",
            no_ref.len(),
            first_few(&no_ref)
        );
    }
    // Every prompt the run needs, before any match: a missing one (say, the multi-turn
    // prompts) would fail those matches and leave a table of the rest (FastChat stops too).
    let pairwise = !matches!(opts.mode, Mode::Single);
    for q in questions {
        for turn in if q.turns.len() >= 2 { 1..=2 } else { 1..=1 } {
            verdict_format(judge.prompt_for(q, turn, pairwise)?.0)?;
        }
    }
    let baseline = match opts.mode {
        Mode::PairwiseBaseline => opts.baseline.as_ref(),
        _ => None,
    };
    for m in models.iter().chain(baseline) {
        let Some(of_model) = answers.get(m) else {
            anyhow::bail!(
                "no answers of model {m:?} (answers are there for: {})",
                answers.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let missing: Vec<u64> = questions
            .iter()
            .map(|q| q.question_id)
            .filter(|id| !of_model.contains_key(id))
            .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "model {m:?} has no answer to {} of the {} questions (questions {}): run \
                 `mtbench answer` again (it retries the failed ones) or select fewer questions",
                missing.len(),
                questions.len(),
                first_few(&missing)
            );
        }
    }
    Ok(())
}

/// Judgments already in the output file count as done only where they were made from the
/// prompts this run would send: `stale` of them were not (another judge prompts file, such as
/// `rename-prompts`' renamed one, or answers generated again), and the run would skip their
/// matches and leave two experiments mixed in one file.
fn refuse_stale(stale: usize, opts: &JudgeOptions) -> Result<()> {
    if stale > 0 {
        anyhow::bail!(
            "{stale} judgments by this judge in {} were made from other prompts than this run's \
             (another --judge-prompts file, such as rename-prompts' output, or answers generated \
             again): judge into another --out, or remove them from it",
            opts.out.display()
        );
    }
    Ok(())
}

/// Runs the matches not yet in the output file. Returns (judged, errors); an error when every
/// match failed, or at once when one failed for a reason all would (a wrong key, model or
/// endpoint).
pub async fn run(
    judge: &Judge,
    questions: &[Question],
    answers: &BTreeMap<String, BTreeMap<u64, Answer>>,
    opts: &JudgeOptions,
) -> Result<(usize, usize)> {
    let models: Vec<String> = match &opts.models {
        Some(m) => m.clone(),
        None => answers.keys().cloned().collect(),
    };
    if models.is_empty() {
        anyhow::bail!("no answers to judge (no model's answer file was found)");
    }
    check_inputs(judge, questions, answers, &models, opts)?;
    let turns_of = |q: &Question| {
        if q.turns.len() >= 2 {
            vec![1u8, 2]
        } else {
            vec![1u8]
        }
    };
    let judge_id = |name: String| (judge.client.model.clone(), name);
    let (mut ok, mut errors) = (0usize, 0usize);
    match opts.mode {
        Mode::Single => {
            // Done: judged by this judge model (another judge's verdicts in the same file
            // are not this one's).
            let existing: Vec<SingleJudgment> = read_existing(&opts.out);
            let done: HashMap<(u64, String, u8), &SingleJudgment> = existing
                .iter()
                .filter(|j| j.judge.0 == judge.client.model)
                .map(|j| ((j.question_id, j.model.clone(), j.turn), j))
                .collect();
            let mut stale = 0;
            let mut matches = vec![];
            for q in questions {
                for m in &models {
                    let Some(a) = answers.get(m).and_then(|x| x.get(&q.question_id)) else {
                        continue;
                    };
                    for t in turns_of(q) {
                        match done.get(&(q.question_id, m.clone(), t)) {
                            Some(j) if j.user_prompt != judge.single_prompt(q, a, t)?.2 => {
                                stale += 1
                            }
                            Some(_) => {}
                            None => matches.push((q, m, a, t)),
                        }
                    }
                }
            }
            refuse_stale(stale, opts)?;
            let pb = crate::progress(matches.len() as u64, "judge single");
            let mut s = stream::iter(matches)
                .map(|(q, m, a, t)| async move {
                    let r = async {
                        let (name, system, user) = judge.single_prompt(q, a, t)?;
                        let judgment = judge.ask(&system, &user, VerdictFormat::Score).await?;
                        Ok::<_, anyhow::Error>((name, user, judgment))
                    }
                    .await;
                    (q, m, t, r)
                })
                .buffer_unordered(opts.parallel.max(1));
            while let Some((q, m, t, r)) = s.next().await {
                pb.inc(1);
                match r {
                    Ok((name, user_prompt, judgment)) => {
                        let score = parse_score(&judgment);
                        append_jsonl(
                            &opts.out,
                            &SingleJudgment {
                                question_id: q.question_id,
                                model: m.clone(),
                                judge: judge_id(name),
                                user_prompt,
                                judgment,
                                score,
                                turn: t,
                                tstamp: now(),
                            },
                        )?;
                        ok += 1;
                    }
                    // A wrong key, model or endpoint: every other match would fail too.
                    Err(e) if ChatError::is_fatal(&e) => {
                        pb.abandon();
                        return Err(
                            e.context(format!("question {} model {m} turn {t}", q.question_id))
                        );
                    }
                    Err(e) => {
                        tracing::warn!("question {} model {m} turn {t}: {e}", q.question_id);
                        errors += 1;
                    }
                }
            }
            pb.finish();
        }
        Mode::PairwiseBaseline | Mode::PairwiseAll => {
            let pairs: Vec<(String, String)> = if opts.mode == Mode::PairwiseBaseline {
                let base = opts
                    .baseline
                    .clone()
                    .ok_or_else(|| anyhow!("--baseline is required for pairwise-baseline"))?;
                models
                    .iter()
                    .filter(|m| **m != base)
                    .map(|m| (m.clone(), base.clone()))
                    .collect()
            } else {
                let mut v = vec![];
                for i in 0..models.len() {
                    for j in i + 1..models.len() {
                        v.push((models[i].clone(), models[j].clone()));
                    }
                }
                v
            };
            // Done: this pair by this judge model, in either order (both orders are played
            // in every match: baseline runs store (model, baseline), all-pairs runs the
            // sorted pair).
            let unordered = |a: &String, b: &String| {
                if a <= b {
                    (a.clone(), b.clone())
                } else {
                    (b.clone(), a.clone())
                }
            };
            let existing: Vec<PairJudgment> = read_existing(&opts.out);
            let done: HashMap<(u64, (String, String), u8), &PairJudgment> = existing
                .iter()
                .filter(|j| j.judge.0 == judge.client.model)
                .map(|j| {
                    (
                        (j.question_id, unordered(&j.model_1, &j.model_2), j.turn),
                        j,
                    )
                })
                .collect();
            let mut stale = 0;
            let mut matches = vec![];
            for q in questions {
                for (m1, m2) in &pairs {
                    let (Some(a1), Some(a2)) = (
                        answers.get(m1).and_then(|x| x.get(&q.question_id)),
                        answers.get(m2).and_then(|x| x.get(&q.question_id)),
                    ) else {
                        continue;
                    };
                    for t in turns_of(q) {
                        match done.get(&(q.question_id, unordered(m1, m2), t)) {
                            Some(j) => {
                                // Its first game showed its own model_1 as A.
                                let (x, y) = if j.model_1 == *m1 { (a1, a2) } else { (a2, a1) };
                                if j.g1_user_prompt != judge.pair_prompt(q, x, y, t)?.2 {
                                    stale += 1;
                                }
                            }
                            None => matches.push((q, m1, m2, a1, a2, t)),
                        }
                    }
                }
            }
            refuse_stale(stale, opts)?;
            let pb = crate::progress(matches.len() as u64, "judge pairwise");
            let mut s = stream::iter(matches)
                .map(|(q, m1, m2, a1, a2, t)| async move {
                    let r = async {
                        let (name, system, p1) = judge.pair_prompt(q, a1, a2, t)?;
                        let (_, _, p2) = judge.pair_prompt(q, a2, a1, t)?;
                        let format = verdict_format(judge.prompt_for(q, t, true)?.0)?;
                        let j1 = judge.ask(&system, &p1, format).await?;
                        let j2 = judge.ask(&system, &p2, format).await?;
                        let verdicts =
                            game_winners(pair_verdict(format, &j1), pair_verdict(format, &j2));
                        Ok::<_, anyhow::Error>((name, p1, j1, p2, j2, verdicts))
                    }
                    .await;
                    (q, m1, m2, t, r)
                })
                .buffer_unordered(opts.parallel.max(1));
            while let Some((q, m1, m2, t, r)) = s.next().await {
                pb.inc(1);
                match r {
                    Ok((name, p1, j1, p2, j2, (g1, g2))) => {
                        append_jsonl(
                            &opts.out,
                            &PairJudgment {
                                question_id: q.question_id,
                                model_1: m1.clone(),
                                model_2: m2.clone(),
                                g1_winner: g1,
                                g2_winner: g2,
                                judge: judge_id(name),
                                g1_user_prompt: p1,
                                g1_judgment: j1,
                                g2_user_prompt: p2,
                                g2_judgment: j2,
                                turn: t,
                                tstamp: now(),
                            },
                        )?;
                        ok += 1;
                    }
                    Err(e) if ChatError::is_fatal(&e) => {
                        pb.abandon();
                        return Err(
                            e.context(format!("question {} {m1} vs {m2} turn {t}", q.question_id))
                        );
                    }
                    Err(e) => {
                        tracing::warn!("question {} {m1} vs {m2} turn {t}: {e}", q.question_id);
                        errors += 1;
                    }
                }
            }
            pb.finish();
        }
    }
    // Nothing judged and something failed: the run failed, whatever it was.
    if ok == 0 && errors > 0 {
        anyhow::bail!(
            "every one of the {errors} matches failed (the warnings above say why); they are \
             tried again on the next run"
        );
    }
    Ok((ok, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair_prompt() -> JudgePrompt {
        JudgePrompt {
            name: "pair-v2".into(),
            kind: "pairwise".into(),
            system_prompt: "Do not favor certain names of the assistants. Output \"[[A]]\" if \
                            assistant A is better, \"[[B]]\" if assistant B is better, and \
                            \"[[C]]\" for a tie."
                .into(),
            prompt_template: "[The Start of Assistant A's Answer]\n{answer_a}\n\
                              [The End of Assistant A's Answer]\n\n### Assistant B:\n{answer_b}"
                .into(),
            description: String::new(),
            category: "general".into(),
            output_format: "[[A]]".into(),
            verdict_labels: None,
        }
    }

    /// FastChat's `two_score_pattern`, its backup and `TIE_DELTA` (0.1).
    #[test]
    fn two_scores_give_the_higher_one_or_a_tie() {
        assert_eq!(parse_two_scores("so [[8, 6]]"), "A");
        assert_eq!(parse_two_scores("[[6,8]]"), "B");
        assert_eq!(parse_two_scores("[[7.5, 7.45]]"), "tie");
        assert_eq!(parse_two_scores("[7, 9.5]"), "B");
        assert_eq!(parse_two_scores("[[A]] [[8]]"), "error");
        assert_eq!(parse_two_scores("[[8,  6]]"), "error");
    }

    #[test]
    fn renamed_assistants_are_renamed_everywhere_and_their_verdicts_parsed() {
        let p = rename_assistants(&pair_prompt(), "X", "Y");
        assert_eq!(
            p.system_prompt,
            "Do not favor certain names of the assistants. Output \"[[X]]\" if assistant X is \
             better, \"[[Y]]\" if assistant Y is better, and \"[[C]]\" for a tie."
        );
        assert_eq!(
            p.prompt_template,
            "[The Start of Assistant X's Answer]\n{answer_a}\n[The End of Assistant X's \
             Answer]\n\n### Assistant Y:\n{answer_b}"
        );
        assert_eq!(p.output_format, "[[X]]");
        assert_eq!(p.labels(), ["X", "Y", "C"]);
        // The template's fields are untouched: the answers still fill it.
        let vars = BTreeMap::from([("answer_a", "first"), ("answer_b", "second")]);
        assert!(format_template(&p.prompt_template, &vars)
            .unwrap()
            .contains("Assistant X's Answer]\nfirst"));
        let labels = p.labels();
        assert_eq!(parse_verdict_labelled("so [[Y]]", labels), "B");
        assert_eq!(parse_verdict_labelled("[[X]] over [[Y]]", labels), "A");
        assert_eq!(parse_verdict_labelled("[[C]]", labels), "tie");
        // The old names are no verdict under the new ones.
        assert_eq!(parse_verdict_labelled("[[A]]", labels), "error");
        assert_eq!(parse_verdict("[[X]]"), "error");
        // Single-answer prompts have no assistants to rename.
        let single = JudgePrompt {
            kind: "single".into(),
            prompt_template: "### Assistant A:\n{answer}".into(),
            ..pair_prompt()
        };
        assert_eq!(
            rename_assistants(&single, "X", "Y").prompt_template,
            single.prompt_template
        );
        // Labels one inside another would make verdicts ambiguous.
        assert!(rename_assistants(&pair_prompt(), "X", "XY")
            .check_labels()
            .is_err());
        assert!(p.check_labels().is_ok());
    }
}
