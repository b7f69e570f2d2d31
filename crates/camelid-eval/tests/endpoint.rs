//! The chat client, `mtbench answer` and `mtbench judge` against a scripted stand-in for an
//! OpenAI endpoint: retries and their waits, errors that are not retried, errors that stop
//! the run, the URL and body sent, and the answer file they leave.

use camelid_eval::answer::{self, AnswerOptions};
use camelid_eval::client::{ChatClient, ChatError, MaxTokensField, Msg, API_ERROR_OUTPUT};
use camelid_eval::data::{load_answers, Answer, JudgePrompt, Question, SingleJudgment};
use camelid_eval::judge::{self, Judge, JudgeOptions, Mode};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    body: Value,
    at: Instant,
}

enum Reply {
    /// Status, extra headers, body.
    Http(u16, Vec<(&'static str, String)>, String),
    /// No answer, the connection held open (the client's timeout must end it).
    Hang,
    /// The connection closed without an answer.
    Close,
}

fn ok(text: &str) -> Reply {
    let body = json!({"choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": text}}]});
    Reply::Http(200, vec![], body.to_string())
}

fn error(status: u16, message: &str) -> Reply {
    Reply::Http(
        status,
        vec![],
        json!({"error": {"message": message}}).to_string(),
    )
}

/// A server on a loopback port (std only, one thread per connection, one request each)
/// answering request number `n` (from 0, in arrival order) with `respond(n, request)`.
/// Returns its base URL and the requests it saw.
fn fake(
    respond: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(vec![]));
    let (log, respond) = (seen.clone(), Arc::new(respond));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (log, respond) = (log.clone(), respond.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                let mut first = String::new();
                if reader.read_line(&mut first).unwrap_or(0) == 0 {
                    return;
                }
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let req = Seen {
                    path,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    at: Instant::now(),
                };
                let reply = {
                    let mut log = log.lock().unwrap();
                    let r = respond(log.len(), &req);
                    log.push(req);
                    r
                };
                match reply {
                    Reply::Http(status, headers, body) => {
                        let mut head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in headers {
                            head += &format!("{k}: {v}\r\n");
                        }
                        let _ = conn.write_all(format!("{head}\r\n{body}").as_bytes());
                    }
                    Reply::Hang => std::thread::sleep(Duration::from_secs(10)),
                    Reply::Close => {}
                }
            });
        }
    });
    (base, seen)
}

/// A client whose backoff waits are milliseconds.
fn client(base: &str) -> ChatClient {
    let mut c = ChatClient::new(base, "m", None).unwrap();
    c.backoff = Duration::from_millis(1);
    c.max_delay = Duration::from_millis(50);
    c
}

fn hi() -> Vec<Msg> {
    vec![Msg::new("user", "hi")]
}

fn count(seen: &Arc<Mutex<Vec<Seen>>>) -> usize {
    seen.lock().unwrap().len()
}

#[tokio::test]
async fn passing_failures_are_retried_eight_attempts_by_default() {
    let (base, seen) = fake(|n, _| match n {
        0 => error(429, "Rate limit reached"),
        1 => error(500, "internal"),
        2 => Reply::Http(502, vec![], "<html>502 Bad Gateway</html>".into()),
        3 => error(503, "overloaded"),
        4 => error(408, "timeout"),
        5 => error(409, "conflict"),
        6 => Reply::Close,
        _ => ok("fine"),
    });
    assert_eq!(client(&base).chat(&hi(), 0.0, 8).await.unwrap(), "fine");
    assert_eq!(count(&seen), 8);
    // With as many failures as attempts, it gives up, saying how many it made.
    let (base, seen) = fake(|_, _| error(503, "overloaded"));
    let mut c = client(&base);
    c.retries = 2;
    match c.chat(&hi(), 0.0, 8).await {
        Err(ChatError::Transient(m)) => {
            assert!(
                m.contains("overloaded") && m.contains("after 3 attempts"),
                "{m}"
            )
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(count(&seen), 3);
}

#[tokio::test]
async fn retry_after_is_waited_for_up_to_the_cap() {
    let gap = |seen: &Arc<Mutex<Vec<Seen>>>| {
        let s = seen.lock().unwrap();
        assert_eq!(s.len(), 2);
        s[1].at - s[0].at
    };
    // retry-after-ms: 250 ms, where the backoff alone would wait 1 ms.
    let (base, seen) = fake(|n, _| match n {
        0 => Reply::Http(429, vec![("retry-after-ms", "250".into())], "{}".into()),
        _ => ok("fine"),
    });
    let mut c = client(&base);
    c.max_delay = Duration::from_secs(60);
    c.chat(&hi(), 0.0, 8).await.unwrap();
    assert!(gap(&seen) >= Duration::from_millis(240), "{:?}", gap(&seen));
    // Retry-After: 1 (seconds), capped at max_delay (150 ms here; 60 s by default).
    let (base, seen) = fake(|n, _| match n {
        0 => Reply::Http(503, vec![("retry-after", "1".into())], "{}".into()),
        _ => ok("fine"),
    });
    let mut c = client(&base);
    c.max_delay = Duration::from_millis(150);
    c.chat(&hi(), 0.0, 8).await.unwrap();
    let g = gap(&seen);
    assert!(
        g >= Duration::from_millis(140) && g < Duration::from_millis(900),
        "{g:?}"
    );
}

#[tokio::test]
async fn a_rejected_request_is_not_retried() {
    for status in [400, 413, 422] {
        let (base, seen) = fake(move |n, _| match n {
            0 => ok("first"),
            _ => error(status, "This model's maximum context length is 4096 tokens"),
        });
        let c = client(&base);
        c.chat(&hi(), 0.0, 8).await.unwrap();
        match c.chat(&hi(), 0.0, 8).await {
            Err(ChatError::Rejected(m)) => {
                assert!(
                    m.contains(&status.to_string()) && m.contains("maximum context length"),
                    "{m}"
                )
            }
            r => panic!("{status}: {r:?}"),
        }
        assert_eq!(count(&seen), 2, "{status}");
    }
    // A reply without content, its budget spent, would end the same way again.
    let (base, seen) = fake(|_, _| {
        let body = json!({"choices": [{"index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": null}}]});
        Reply::Http(200, vec![], body.to_string())
    });
    match client(&base).chat(&hi(), 0.0, 8).await {
        Err(ChatError::Rejected(m)) => assert!(m.contains("length"), "{m}"),
        r => panic!("{r:?}"),
    }
    assert_eq!(count(&seen), 1);
}

#[tokio::test]
async fn a_wrong_key_model_or_url_is_fatal_at_once() {
    for (status, message) in [
        (401, "Incorrect API key provided"),
        (403, "Project does not have access"),
        (404, "The model `gpt-5x` does not exist"),
    ] {
        let (base, seen) = fake(move |_, _| error(status, message));
        match client(&base).chat(&hi(), 0.0, 8).await {
            Err(ChatError::Fatal(m)) => assert!(m.contains(message), "{m}"),
            r => panic!("{status}: {r:?}"),
        }
        assert_eq!(count(&seen), 1, "{status}");
    }
    // The first requests all rejected: most likely every request is (an unsupported
    // parameter). The first ones are recorded as rejected; the third stops the run.
    let (base, seen) = fake(|_, _| {
        error(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model.",
        )
    });
    let c = client(&base);
    for _ in 1..camelid_eval::client::EARLY_REJECTIONS {
        assert!(matches!(
            c.chat(&hi(), 0.0, 8).await,
            Err(ChatError::Rejected(_))
        ));
    }
    match c.chat(&hi(), 0.0, 8).await {
        Err(ChatError::Fatal(m)) => {
            assert!(
                m.contains("Unsupported") && m.contains("--max-tokens-field"),
                "{m}"
            )
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(count(&seen), camelid_eval::client::EARLY_REJECTIONS);
    // A first question refused for its content (too long for a small judge) is recorded,
    // and the run goes on: a rerun would stop at the same place forever.
    let (base, _) = fake(|n, _| match n {
        0 => error(400, "This model's maximum context length is 4096 tokens"),
        _ => ok("fine"),
    });
    let c = client(&base);
    assert!(matches!(
        c.chat(&hi(), 0.0, 8).await,
        Err(ChatError::Rejected(_))
    ));
    assert_eq!(c.chat(&hi(), 0.0, 8).await.unwrap(), "fine");
    // Nor do several such refusals before the first success (with `--parallel`, turn-2
    // matches too long for a small judge come back at once, while turn-1 verdicts take
    // seconds): each is this request's, not every request's.
    let (base, _) = fake(|n, _| match n {
        0..=5 => error(
            400,
            "This model's maximum context length is 4096 tokens. However, you requested 4200.",
        ),
        _ => ok("fine"),
    });
    let c = client(&base);
    for _ in 0..6 {
        assert!(matches!(
            c.chat(&hi(), 0.0, 8).await,
            Err(ChatError::Rejected(_))
        ));
    }
    assert_eq!(c.chat(&hi(), 0.0, 8).await.unwrap(), "fine");
    // A server's huge retry-after-ms is bounded, not a panic.
    let (base, seen) = fake(|n, _| match n {
        0 => Reply::Http(
            429,
            vec![("retry-after-ms", "1e300".to_string())],
            "{}".into(),
        ),
        _ => ok("after"),
    });
    let mut c = client(&base);
    c.max_delay = std::time::Duration::from_millis(10);
    assert_eq!(c.chat(&hi(), 0.0, 8).await.unwrap(), "after");
    assert_eq!(count(&seen), 2);
}

#[tokio::test]
async fn error_bodies_are_read_whatever_they_are() {
    let page = format!(
        "<html><body>502 Bad Gateway</body>{}</html>",
        "x".repeat(900)
    );
    let (base, _) = fake(move |_, _| Reply::Http(502, vec![], page.clone()));
    let mut c = client(&base);
    c.retries = 0;
    let m = c.chat(&hi(), 0.0, 8).await.unwrap_err().to_string();
    assert!(
        m.contains("HTTP 502") && m.contains("<body>502 Bad Gateway"),
        "{m}"
    );
    assert!(m.len() < 700, "the page is cut at 500 characters: {m}");
    let (base, _) = fake(|_, _| Reply::Http(404, vec![], r#"{"detail":"Not Found"}"#.into()));
    let m = client(&base).chat(&hi(), 0.0, 8).await.unwrap_err();
    assert!(
        m.to_string().ends_with("HTTP 404 Not Found: Not Found"),
        "{m}"
    );
}

#[tokio::test]
async fn the_endpoint_path_is_kept() {
    let (base, seen) = fake(|_, _| ok("fine"));
    for (endpoint, path) in [
        (base.clone(), "/v1/chat/completions"),
        (format!("{base}/"), "/v1/chat/completions"),
        (format!("{base}/v1"), "/v1/chat/completions"),
        (
            format!("{base}/v1beta/openai/"),
            "/v1beta/openai/chat/completions",
        ),
        (
            format!("{base}/openai/deployments/d?api-version=2024-10-21"),
            "/openai/deployments/d/chat/completions?api-version=2024-10-21",
        ),
    ] {
        client(&endpoint).chat(&hi(), 0.0, 8).await.unwrap();
        assert_eq!(
            seen.lock().unwrap().last().unwrap().path,
            path,
            "{endpoint}"
        );
    }
}

#[tokio::test]
async fn reasoning_models_get_max_completion_tokens_and_no_temperature() {
    let (base, seen) = fake(|_, _| ok("fine"));
    let mut c = client(&base);
    c.chat(&hi(), 0.7, 64).await.unwrap();
    c.max_tokens_field = MaxTokensField::MaxCompletionTokens;
    c.send_temperature = false;
    c.chat(&hi(), 0.7, 64).await.unwrap();
    let seen = seen.lock().unwrap();
    let (plain, reasoning) = (&seen[0].body, &seen[1].body);
    assert_eq!(
        (&plain["max_tokens"], &plain["temperature"]),
        (&json!(64), &json!(0.7))
    );
    assert_eq!(reasoning["max_completion_tokens"], 64);
    assert!(reasoning.get("max_tokens").is_none() && reasoning.get("temperature").is_none());
    assert_eq!(
        (&reasoning["model"], &reasoning["n"]),
        (&json!("m"), &json!(1))
    );
}

#[tokio::test]
async fn a_timeout_is_retried_once() {
    let (base, seen) = fake(|_, _| Reply::Hang);
    let mut c = client(&base);
    c.timeout = Duration::from_millis(200);
    c.retries = 5;
    let t0 = Instant::now();
    match c.chat(&hi(), 0.0, 8).await {
        Err(ChatError::Transient(m)) => assert!(m.contains("after 2 attempts"), "{m}"),
        r => panic!("{r:?}"),
    }
    assert_eq!(count(&seen), 2);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

fn question(id: u64) -> Question {
    Question {
        question_id: id,
        category: "writing".into(),
        turns: vec![format!("q{id} turn 1"), format!("q{id} turn 2")],
        required_temperature: None,
    }
}

fn options(out: &std::path::Path) -> AnswerOptions {
    AnswerOptions {
        out: out.to_path_buf(),
        max_tokens: 16,
        num_choices: 1,
        parallel: 1,
        force_temperature: None,
        model_id: "m".into(),
        system: None,
    }
}

/// The user turns of a request.
fn users(r: &Seen) -> Vec<String> {
    r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

/// An answerer that says `answer to <the last user turn>`.
fn echo(r: &Seen) -> Reply {
    ok(&format!("answer to {}", users(r).last().unwrap()))
}

fn lines(p: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn prompt(name: &str, template: &str) -> JudgePrompt {
    JudgePrompt {
        name: name.into(),
        kind: "single".into(),
        system_prompt: "judge".into(),
        prompt_template: template.into(),
        description: String::new(),
        category: "general".into(),
        output_format: "[[rating]]".into(),
        verdict_labels: None,
    }
}

fn judge_of(client: ChatClient) -> Judge {
    Judge {
        client,
        prompts: [
            prompt("single-v1", "{question} {answer}"),
            prompt(
                "single-v1-multi-turn",
                "{question_1} {answer_1} {question_2} {answer_2}",
            ),
        ]
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect(),
        references: Default::default(),
        max_tokens: 16,
        constrain: false,
    }
}

fn judge_options(out: &std::path::Path) -> JudgeOptions {
    JudgeOptions {
        mode: Mode::Single,
        baseline: None,
        out: out.to_path_buf(),
        parallel: 1,
        models: None,
    }
}

/// A turn the endpoint rejects (a context-length 400 on turn 2) is FastChat's `$ERROR$`:
/// the answer is complete, not asked again, and judged.
#[tokio::test]
async fn a_rejected_turn_is_recorded_as_fastchats_error_output_and_judged() {
    let (base, seen) = fake(|_, r| {
        if users(r).len() == 2 && users(r)[0].starts_with("q2") {
            error(400, "This model's maximum context length is 4096 tokens")
        } else {
            echo(r)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.jsonl");
    let qs = [question(1), question(2)];
    let done = answer::run(&client(&base), &qs, &options(&out))
        .await
        .unwrap();
    assert_eq!((done.answered, done.failed, done.rejected_turns), (2, 0, 1));
    let a = lines(&out);
    assert_eq!(a[1]["question_id"], 2);
    assert_eq!(
        a[1]["choices"][0]["turns"],
        json!(["answer to q2 turn 1", API_ERROR_OUTPUT])
    );
    assert!(a[1].get("error").is_none(), "{}", a[1]);
    // Not asked again.
    let before = count(&seen);
    answer::run(&client(&base), &qs, &options(&out))
        .await
        .unwrap();
    assert_eq!(count(&seen), before);
    // Judged: the judge takes the model's answers, `$ERROR$` and all.
    let answers = load_answers(&[&out]).unwrap();
    assert_eq!(answers["m"].len(), 2);
    let (jbase, jseen) = fake(|_, _| ok("Fine. [[6]]"));
    let jout = dir.path().join("single.jsonl");
    let (judged, failed) = judge::run(
        &judge_of(client(&jbase)),
        &qs,
        &answers,
        &judge_options(&jout),
    )
    .await
    .unwrap();
    assert_eq!((judged, failed), (4, 0));
    assert!(jseen
        .lock()
        .unwrap()
        .iter()
        .any(|r| users(r)[0].contains(API_ERROR_OUTPUT)));
}

/// A question that still fails after the retries is left out of the file (FastChat's judge
/// reads every line as an answer) and asked again next run, which leaves one line per
/// question, sorted. An error line an older run wrote is dropped and asked again too.
#[tokio::test]
async fn a_passing_failure_is_asked_again_next_run() {
    let (down, _) = fake(|_, r| {
        if users(r)[0].starts_with("q1") {
            error(503, "overloaded")
        } else {
            echo(r)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.jsonl");
    let qs = [question(1), question(2)];
    let mut c = client(&down);
    c.retries = 1;
    let done = answer::run(&c, &qs, &options(&out)).await.unwrap();
    assert_eq!((done.answered, done.failed), (1, 1));
    let a = lines(&out);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["question_id"], 2);
    assert_eq!(a[0]["choices"][0]["turns"].as_array().unwrap().len(), 2);
    // An older run's error line for question 1: dropped, and question 1 asked again.
    let old_error = json!({"question_id": 1, "answer_id": "x", "model_id": "m",
                           "choices": [], "tstamp": 0.0, "error": "overloaded"});
    std::fs::write(
        &out,
        format!("{old_error}\n{}", std::fs::read_to_string(&out).unwrap()),
    )
    .unwrap();
    let (up, seen) = fake(|_, r| echo(r));
    let done = answer::run(&client(&up), &qs, &options(&out))
        .await
        .unwrap();
    assert_eq!((done.answered, done.failed), (1, 0));
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|r| users(r)[0].starts_with("q1")));
    let a = lines(&out);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0]["choices"][0]["turns"][1], "answer to q1 turn 2");
    assert!(a[0].get("error").is_none());
}

/// A rerun asking for more choices (`--num-choices` raised) answers again the questions
/// answered with fewer, as FastChat's run would; their new lines replace the old.
#[tokio::test]
async fn more_choices_asked_for_answers_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.jsonl");
    let qs = [question(1), question(2)];
    let (up, seen) = fake(|_, r| echo(r));
    let done = answer::run(&client(&up), &qs, &options(&out))
        .await
        .unwrap();
    assert_eq!(done.answered, 2);
    let before = seen.lock().unwrap().len();
    let mut three = options(&out);
    three.num_choices = 3;
    let done = answer::run(&client(&up), &qs, &three).await.unwrap();
    assert_eq!(done.answered, 2);
    assert!(seen.lock().unwrap().len() > before);
    let a = lines(&out);
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(
        a.iter()
            .all(|l| l["choices"].as_array().unwrap().len() == 3),
        "{a:?}"
    );
    // Asked again with as many or fewer: nothing to do.
    let after = seen.lock().unwrap().len();
    answer::run(&client(&up), &qs, &options(&out))
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), after);
}

#[tokio::test]
async fn a_wrong_key_stops_answering_and_judging_at_once() {
    let (base, seen) = fake(|_, _| error(401, "Incorrect API key provided"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.jsonl");
    let qs: Vec<Question> = (1..=3).map(question).collect();
    let e = answer::run(&client(&base), &qs, &options(&out))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("401") && e.contains("Incorrect API key"), "{e}");
    assert_eq!(count(&seen), 1);
    assert!(
        !out.exists(),
        "no error lines for a run that could not start"
    );
    // The judge: one request, not one per match.
    let answers = two_answers(&qs);
    let e = judge::run(
        &judge_of(client(&base)),
        &qs,
        &answers,
        &judge_options(&dir.path().join("j.jsonl")),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("Incorrect API key"), "{e:#}");
    assert_eq!(count(&seen), 2);
}

fn two_answers(
    qs: &[Question],
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<u64, Answer>> {
    let mut by_q = std::collections::BTreeMap::new();
    for q in qs {
        by_q.insert(
            q.question_id,
            Answer {
                question_id: q.question_id,
                answer_id: "x".into(),
                model_id: "m".into(),
                choices: vec![camelid_eval::data::Choice {
                    index: 0,
                    turns: vec!["a1".into(), "a2".into()],
                }],
                tstamp: 0.0,
                error: None,
            },
        );
    }
    [("m".to_string(), by_q)].into_iter().collect()
}

#[tokio::test]
async fn judging_fails_when_every_match_fails() {
    let (base, seen) = fake(|_, _| error(503, "overloaded"));
    let mut c = client(&base);
    c.retries = 0;
    let qs = [question(1)];
    let dir = tempfile::tempdir().unwrap();
    let e = judge::run(
        &judge_of(c),
        &qs,
        &two_answers(&qs),
        &judge_options(&dir.path().join("j.jsonl")),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("every one of the 2 matches failed"), "{e}");
    assert_eq!(count(&seen), 2);
}

/// A judgment the judge endpoint rejects is FastChat's `$ERROR$`, scored -1: the match is
/// done.
#[tokio::test]
async fn a_rejected_judgment_is_recorded_as_fastchats_error_output() {
    let (base, _) = fake(|n, _| match n {
        0 => ok("Good. [[7]]"),
        _ => error(400, "maximum context length exceeded"),
    });
    let qs = [question(1)];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("j.jsonl");
    let (judged, failed) = judge::run(
        &judge_of(client(&base)),
        &qs,
        &two_answers(&qs),
        &judge_options(&out),
    )
    .await
    .unwrap();
    assert_eq!((judged, failed), (2, 0));
    let js: Vec<SingleJudgment> = camelid_eval::data::read_jsonl(&out).unwrap();
    let by_turn = |t: u8| js.iter().find(|j| j.turn == t).unwrap();
    assert_eq!(by_turn(1).score, 7.0);
    assert_eq!(
        (by_turn(2).judgment.as_str(), by_turn(2).score),
        (API_ERROR_OUTPUT, -1.0)
    );
}

/// After a run the file is FastChat's `reorg_answer_file`'s: one line per question, the last
/// successful one, sorted by question id, each line as written; a run with nothing to do
/// leaves it byte for byte.
#[tokio::test]
async fn the_answer_file_is_sorted_one_line_per_question() {
    let line = |id: u64, text: &str, error: Option<&str>| {
        let mut v = json!({"question_id": id, "answer_id": text, "model_id": "m",
            "choices": [{"index": 0, "turns": [text, text]}], "tstamp": 1.5});
        if let Some(e) = error {
            v["error"] = e.into();
            v["choices"] = json!([]);
        }
        v.to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.jsonl");
    let written = [
        line(3, "three", None),
        line(1, "old", None),
        line(2, "", Some("HTTP 503")),
        line(1, "new", None),
        line(1, "", Some("HTTP 503")),
        line(2, "two", None),
    ];
    std::fs::write(&out, written.join("\n") + "\n").unwrap();
    let (base, seen) = fake(|_, r| echo(r));
    let qs: Vec<Question> = (1..=4).map(question).collect();
    let done = answer::run(&client(&base), &qs, &options(&out))
        .await
        .unwrap();
    assert_eq!(done.answered, 1, "only question 4 was left");
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|r| users(r)[0].starts_with("q4")));
    let text = std::fs::read_to_string(&out).unwrap();
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), 4, "{text}");
    assert_eq!(&got[..3], [&written[3], &written[5], &written[0]]);
    assert_eq!(lines(&out)[3]["question_id"], 4);
    // Nothing to do: not a request, not a byte changed.
    let before = count(&seen);
    answer::run(&client(&base), &qs, &options(&out))
        .await
        .unwrap();
    assert_eq!(count(&seen), before);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

/// A judge over pairwise prompts in output format `format` (pair-v2 and its multi-turn form).
fn pair_judge_of(client: ChatClient, format: &str) -> Judge {
    let pair = |name: &str, template: &str| JudgePrompt {
        kind: "pairwise".into(),
        output_format: format.into(),
        ..prompt(name, template)
    };
    Judge {
        prompts: [
            pair(
                "pair-v2",
                "{question} Assistant A: {answer_a} Assistant B: {answer_b}",
            ),
            pair(
                "pair-v2-multi-turn",
                "{question_1} {question_2} Assistant A: {answer_a_1} {answer_a_2} \
                 Assistant B: {answer_b_1} {answer_b_2}",
            ),
        ]
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect(),
        ..judge_of(client)
    }
}

/// Answers of models `good` (whose answers say GOOD) and `meh` to `qs`.
fn good_and_meh(
    qs: &[Question],
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<u64, Answer>> {
    let mut of = two_answers(qs).remove("m").unwrap();
    let meh = of.clone();
    for a in of.values_mut() {
        a.choices[0].turns = vec!["GOOD 1".into(), "GOOD 2".into()];
    }
    [("good".to_string(), of), ("meh".to_string(), meh)]
        .into_iter()
        .collect()
}

/// FastChat's score-style pairwise prompts (`[[rating_a,rating_b]]`, the paper's position
/// bias study): the answer scored higher wins, scores within 0.1 are a tie, the backup
/// `[a, b]` pattern is read too; a format FastChat does not read stops the run before any
/// call, as FastChat raises on it.
#[tokio::test]
async fn two_score_pairwise_verdicts_are_read_as_fastchat_reads_them() {
    // The judge scores whichever answer says GOOD 8, the other 6 (turn 1), or both 7 and
    // 7.05 (turn 2, in the backup pattern).
    let (base, _) = fake(|_, seen| {
        let user = seen.body["messages"][1]["content"].as_str().unwrap_or("");
        let good_first = user.find("GOOD") < user.find("B:");
        if user.contains("turn 2") {
            ok("Close. [7, 7.05]")
        } else if good_first {
            ok("A is better. [[8, 6]]")
        } else {
            ok("B is better. [[6,8]]")
        }
    });
    let qs = [question(1)];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pair.jsonl");
    let opts = JudgeOptions {
        mode: Mode::PairwiseAll,
        ..judge_options(&out)
    };
    let judge = pair_judge_of(client(&base), "[[rating_a,rating_b]]");
    let (judged, failed) = judge::run(&judge, &qs, &good_and_meh(&qs), &opts)
        .await
        .unwrap();
    assert_eq!((judged, failed), (2, 0));
    let js = lines(&out);
    let turn = |t: u64| js.iter().find(|j| j["turn"] == t).unwrap();
    // model_1 is `good` (the sorted pair).
    assert_eq!(turn(1)["model_1"], "good");
    assert_eq!(
        (&turn(1)["g1_winner"], &turn(1)["g2_winner"]),
        (&json!("model_1"), &json!("model_1"))
    );
    assert_eq!(
        (&turn(2)["g1_winner"], &turn(2)["g2_winner"]),
        (&json!("tie"), &json!("tie"))
    );
    let (base, seen) = fake(|_, _| ok("[[A]]"));
    let judge = pair_judge_of(client(&base), "[[winner]]");
    let e = judge::run(
        &judge,
        &qs,
        &good_and_meh(&qs),
        &JudgeOptions {
            mode: Mode::PairwiseAll,
            ..judge_options(&dir.path().join("other.jsonl"))
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("pair-v2") && e.contains("[[winner]]"), "{e}");
    assert_eq!(count(&seen), 0);
}

/// Judgments already in the output file are done only where this run would have sent the
/// same prompts: a run with other judge prompts (the rename experiment's file) into the same
/// file stops, naming the mix, instead of judging nothing; the same prompts again judge
/// nothing and succeed.
#[tokio::test]
async fn judgments_from_other_prompts_are_not_taken_as_done() {
    let (base, _) = fake(|_, _| ok("Fine. [[7]]"));
    let qs = [question(1)];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("j.jsonl");
    let answers = two_answers(&qs);
    let judge = judge_of(client(&base));
    assert_eq!(
        judge::run(&judge, &qs, &answers, &judge_options(&out))
            .await
            .unwrap(),
        (2, 0)
    );
    assert_eq!(
        judge::run(&judge, &qs, &answers, &judge_options(&out))
            .await
            .unwrap(),
        (0, 0)
    );
    let mut other = judge_of(client(&base));
    other.prompts.get_mut("single-v1").unwrap().prompt_template =
        "Rate: {question} {answer}".into();
    let e = judge::run(&other, &qs, &answers, &judge_options(&out))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 judgments by this judge") && e.contains("other prompts"),
        "{e}"
    );
    // Pairwise alike: the first run's file, then the same pairs under renamed labels.
    let out = dir.path().join("pair.jsonl");
    let opts = JudgeOptions {
        mode: Mode::PairwiseAll,
        ..judge_options(&out)
    };
    let (base, _) = fake(|_, _| ok("[[A]]"));
    let judge = pair_judge_of(client(&base), "[[A]]");
    let answers = good_and_meh(&qs);
    assert_eq!(
        judge::run(&judge, &qs, &answers, &opts).await.unwrap(),
        (2, 0)
    );
    let mut renamed = pair_judge_of(client(&base), "[[A]]");
    for p in renamed.prompts.values_mut() {
        *p = judge::rename_assistants(p, "X", "Y");
    }
    let e = judge::run(&renamed, &qs, &answers, &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 judgments by this judge"), "{e}");
}
