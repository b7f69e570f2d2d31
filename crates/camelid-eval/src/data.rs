//! MT-bench files in FastChat's formats.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

/// JSON lines of `T`. A last line cut short (no final newline, not JSON: a run killed while
/// appending) is skipped with a warning, as [`read_existing`] and `ratings::read_records`
/// skip it; any other bad line is an error.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut out = Vec::with_capacity(lines.len());
    for (k, &(i, l)) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(v) => out.push(v),
            // Only a line that is not JSON at all is torn: a whole line of the wrong shape
            // is still an error.
            Err(_)
                if k + 1 == lines.len()
                    && !text.ends_with('\n')
                    && serde_json::from_str::<serde_json::Value>(l).is_err() =>
            {
                tracing::warn!(
                    "{}:{}: the last line is cut short: skipped",
                    path.display(),
                    i + 1
                );
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}:{}: bad JSON line", path.display(), i + 1))
            }
        }
    }
    Ok(out)
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

/// An exclusive lock on `path`'s writers, held until dropped: every append and rewrite of an
/// output file takes it, so two runs on one file (two judges writing one judgment file)
/// neither cut each other's line nor lose one appended during a rewrite. The lock is on a
/// file beside it (`.NAME.lock`): a rewrite renames a new file over `path`, and a lock on
/// the old one would not hold against writers that opened the new one.
pub fn lock_writers(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let lock_path = path.with_file_name(format!(".{name}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    f.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    Ok(f)
}

/// Appends one JSON line and flushes, so an interrupted run keeps what it finished.
pub fn append_jsonl<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let _writers = lock_writers(path)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let before = end_last_line(&mut f, path)?;
    write_line(&mut f, before, v)?;
    f.flush()?;
    Ok(())
}

/// `before`, the JSON of `v` and its newline in one write: a kill falls before the line or
/// after it (two writes, a kill between them, left a line without its newline that the next
/// line was glued onto).
fn write_line<T: Serialize>(w: &mut impl Write, before: String, v: &T) -> Result<()> {
    let mut line = before;
    line.push_str(&serde_json::to_string(v)?);
    line.push('\n');
    w.write_all(line.as_bytes())?;
    Ok(())
}

/// What must go before the next line of a file whose last line has no newline: a newline
/// when that line is JSON (a file written by hand), nothing when it is not, that line
/// being cut off here (a run killed while appending: the next line glued onto it would make
/// both unreadable, and resuming redoes what it held, as [`read_existing`] skips it).
fn end_last_line(f: &mut std::fs::File, path: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    if f.metadata()?.len() == 0 {
        return Ok(String::new());
    }
    let mut last = [0u8];
    f.seek(SeekFrom::End(-1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(String::new());
    }
    let mut text = vec![];
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut text)?;
    let start = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if serde_json::from_slice::<serde_json::Value>(&text[start..]).is_ok() {
        return Ok("\n".into());
    }
    tracing::warn!(
        "{}: its last line is cut short ({} bytes): dropped before appending",
        path.display(),
        text.len() - start
    );
    f.set_len(start as u64)?;
    Ok(String::new())
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

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A writer killed after its first write call.
    struct KilledAfterOneWrite(Vec<u8>, bool);

    impl Write for KilledAfterOneWrite {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if std::mem::replace(&mut self.1, true) {
                return Err(std::io::Error::other("killed"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_and_its_newline_are_one_write() {
        let mut w = KilledAfterOneWrite(vec![], false);
        write_line(&mut w, String::new(), &json!({"a": 1})).unwrap();
        assert_eq!(w.0, b"{\"a\":1}\n");
    }

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.jsonl");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn a_line_is_not_glued_onto_a_last_line_without_newline() {
        // A whole JSON line without its newline (written by hand) is kept.
        let (_d, p) = file("{\"n\":1}\n{\"n\":2}");
        append_jsonl(&p, &json!({"n": 3})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n"
        );
        assert_eq!(read_jsonl::<Value>(&p).unwrap().len(), 3);
    }

    #[test]
    fn a_torn_last_line_is_skipped_then_dropped_by_the_next_append() {
        let (_d, p) = file("{\"n\":1}\n{\"n\":2}\n{\"n\":");
        // Read: the whole lines, the torn one skipped (as resuming skips it).
        assert_eq!(
            read_jsonl::<Value>(&p).unwrap(),
            [json!({"n": 1}), json!({"n": 2})]
        );
        assert_eq!(read_existing::<Value>(&p).len(), 2);
        // Appended to: the torn line goes, so it is not left inside the file.
        append_jsonl(&p, &json!({"n": 3})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n"
        );
        // A file that is all one torn line is emptied first.
        let (_d, q) = file("{\"n\"");
        append_jsonl(&q, &json!({"n": 4})).unwrap();
        assert_eq!(std::fs::read_to_string(&q).unwrap(), "{\"n\":4}\n");
    }

    #[test]
    fn only_a_torn_last_line_is_forgiven() {
        // A bad line before the last, or a bad last line with its newline, is an error.
        for text in ["{\"n\":1}\n{\"n\":\n{\"n\":2}\n", "{\"n\":1}\n{\"n\":\n"] {
            let (_d, p) = file(text);
            let err = read_jsonl::<Value>(&p).unwrap_err().to_string();
            assert!(err.contains(":2: bad JSON line"), "{err}");
        }
        // A whole JSON line of the wrong shape is not torn, newline or not.
        let (_d, p) = file("{\"question_id\": 1}");
        assert!(read_jsonl::<Question>(&p).is_err());
    }
}
