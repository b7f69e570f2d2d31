//! MT-bench files in FastChat's formats.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Question {
    pub question_id: u64,
    pub category: String,
    pub turns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_temperature: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    pub index: usize,
    pub turns: Vec<String>,
}

/// One line of an answer file (`model_answer/MODEL.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub question_id: u64,
    pub answer_id: String,
    pub model_id: String,
    pub choices: Vec<Choice>,
    pub tstamp: f64,
    /// Set when the answer could not be generated; judges skip such lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgePrompt {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub system_prompt: String,
    pub prompt_template: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub category: String,
    pub output_format: String,
    /// A pairwise prompt's names for the first-shown assistant, the second and a tie, as its
    /// verdicts write them (`[[A]]`, `[[B]]`, `[[C]]` when absent, FastChat's). A renamed
    /// prompt (the paper's "rename" experiment) carries its own: see `judge::rename_assistants`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict_labels: Option<[String; 3]>,
}

impl JudgePrompt {
    /// The verdict labels: first-shown, second-shown, tie.
    pub fn labels(&self) -> [&str; 3] {
        match &self.verdict_labels {
            Some([a, b, c]) => [a, b, c],
            None => ["A", "B", "C"],
        }
    }

    /// Three non-empty labels, none inside another (`A` in `AB` would make verdicts
    /// ambiguous).
    pub fn check_labels(&self) -> Result<()> {
        let [a, b, c] = self.labels();
        let clash = |x: &str, y: &str| x.contains(y) || y.contains(x);
        if [a, b, c].iter().any(|l| l.trim().is_empty())
            || clash(a, b)
            || clash(a, c)
            || clash(b, c)
        {
            anyhow::bail!(
                "judge prompt {}: verdict_labels must be three non-empty labels, none inside \
                 another (got {:?})",
                self.name,
                [a, b, c]
            );
        }
        Ok(())
    }
}

/// `(judge model, prompt name)`, serialised as FastChat's two-element list.
pub type JudgeId = (String, String);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SingleJudgment {
    pub question_id: u64,
    pub model: String,
    pub judge: JudgeId,
    pub user_prompt: String,
    pub judgment: String,
    pub score: f64,
    pub turn: u8,
    pub tstamp: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairJudgment {
    pub question_id: u64,
    pub model_1: String,
    pub model_2: String,
    pub g1_winner: String,
    pub g2_winner: String,
    pub judge: JudgeId,
    pub g1_user_prompt: String,
    pub g1_judgment: String,
    pub g2_user_prompt: String,
    pub g2_judgment: String,
    pub turn: u8,
    pub tstamp: f64,
}

pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: bad JSON line", path.display(), i + 1))
        })
        .collect()
}

/// Lines already in an output file, for resuming (a missing file is empty; a torn last
/// line from an interrupted run is ignored).
pub fn read_existing<T: DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Appends one JSON line and flushes, so an interrupted run keeps what it finished.
pub fn append_jsonl<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(v)?)?;
    f.flush()?;
    Ok(())
}

pub fn load_questions(path: &Path) -> Result<Vec<Question>> {
    read_jsonl(path)
}

pub fn load_judge_prompts(path: &Path) -> Result<BTreeMap<String, JudgePrompt>> {
    let prompts = read_jsonl::<JudgePrompt>(path)?;
    for p in &prompts {
        p.check_labels()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(prompts.into_iter().map(|p| (p.name.clone(), p)).collect())
}

/// Answers by model id, then question id. `paths` are files or folders of `*.jsonl`.
pub fn load_answers(paths: &[impl AsRef<Path>]) -> Result<BTreeMap<String, BTreeMap<u64, Answer>>> {
    let mut out: BTreeMap<String, BTreeMap<u64, Answer>> = BTreeMap::new();
    let mut from: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
    for p in paths {
        let p = p.as_ref();
        let files: Vec<std::path::PathBuf> = if p.is_dir() {
            let mut v: Vec<_> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            v.sort();
            v
        } else {
            vec![p.to_path_buf()]
        };
        for f in files {
            for a in read_jsonl::<Answer>(&f)? {
                // Two files of one model id would merge question by question, the later
                // answer replacing the earlier (FastChat names a model by its file instead).
                match from.get(&a.model_id) {
                    Some(g) if *g != f => anyhow::bail!(
                        "{} and {} both hold answers of model {:?}: give each run its own \
                         `mtbench answer --model-id`",
                        g.display(),
                        f.display(),
                        a.model_id
                    ),
                    Some(_) => {}
                    None => {
                        from.insert(a.model_id.clone(), f.clone());
                    }
                }
                if a.error.is_none() {
                    out.entry(a.model_id.clone())
                        .or_default()
                        .insert(a.question_id, a);
                }
            }
        }
    }
    Ok(out)
}

/// Keeps the first `first_n` questions, then at most `per_category` of each category.
pub fn select_questions(
    qs: Vec<Question>,
    first_n: Option<usize>,
    per_category: Option<usize>,
) -> Vec<Question> {
    let mut qs: Vec<Question> = qs.into_iter().take(first_n.unwrap_or(usize::MAX)).collect();
    if let Some(k) = per_category {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        qs.retain(|q| {
            let c = seen.entry(q.category.clone()).or_default();
            *c += 1;
            *c <= k
        });
    }
    qs
}

pub fn done_ids<T>(existing: &[T], id: impl Fn(&T) -> u64) -> HashSet<u64> {
    existing.iter().map(id).collect()
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
