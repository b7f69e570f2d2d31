//! The arena over HTTP on a real server (two served names for the default model): battles,
//! votes, the store's rules (tokens, one vote, rate limits, expiry, no eviction), the
//! leaderboard, FastChat export and import.

use camelid_server::arena::{Arena, ArenaConfig, RateLimits, Visitor};
use camelid_server::{AppState, ModelEntry, ServerConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::runtime;

fn entry(name: &str) -> ModelEntry {
    entry_with_context(name, 512)
}

/// The default model served as `name` with a context of `max_model_len` tokens, on a small KV
/// pool: this binary runs a dozen servers of two engines at once.
/// Battles between the default model with a context of 512 (`roomy`) and of `cramped`.
fn roomy_and_cramped(cramped: usize) -> Server {
    serve_models(
        ServerConfig::default(),
        Arena::in_memory(no_limits()),
        vec![
            entry_with_context("roomy", 512),
            entry_with_context("cramped", cramped),
        ],
    )
}

/// Six of these (about 60 tokens) fit the roomy model, not a cramped one of 48 or 64.
const LONG_FOR_CRAMPED: &str = "Please describe the weather in a few words. ";

fn entry_with_context(name: &str, max_model_len: usize) -> ModelEntry {
    common::model_entry(name, &[], max_model_len, |_| camelid_engine::EngineConfig {
        kv_cache_mb: 32,
        ..Default::default()
    })
}

struct Server {
    base: String,
    state: Arc<AppState>,
}

/// A test's models go with it: the server's task (on the shared runtime) holds its state
/// for good, and 41 tests' engines, half a GB each with their models and caches, once took
/// the test process past the machine's 24 GB. Without a handle their engines stop.
impl Drop for Server {
    fn drop(&mut self) {
        self.state.set_models(vec![]);
    }
}

impl Server {
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_with_headers(path, body).0
    }

    /// (status, body) and the `Retry-After` header.
    fn post_with_headers(&self, path: &str, body: Value) -> ((u16, Value), Option<String>) {
        runtime().block_on(async {
            let r = reqwest::Client::new()
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let text = r.text().await.unwrap();
            (
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                ),
                retry,
            )
        })
    }

    fn leaderboard(&self) -> Value {
        runtime().block_on(async {
            reqwest::get(format!("{}/arena/leaderboard", self.base))
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    }

    /// The leaderboard once it counts `votes` votes (it is refitted within seconds).
    fn leaderboard_with(&self, votes: u64) -> Value {
        let t = Instant::now();
        loop {
            let b = self.leaderboard();
            if b["votes"].as_u64() == Some(votes) {
                return b;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "leaderboard still at {b} (want {votes} votes)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new battle; (battle_id, token, the whole reply).
    fn battle(&self, extra: Value) -> (String, String, Value) {
        let mut body = ask();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, b) = self.post("/arena/battles", body);
        assert_eq!(status, 200, "{b}");
        (
            b["battle_id"].as_str().unwrap().to_string(),
            b["token"].as_str().unwrap().to_string(),
            b,
        )
    }

    fn vote(&self, id: &str, token: Option<&str>, winner: &str) -> (u16, Value) {
        let mut body = json!({ "winner": winner });
        if let Some(t) = token {
            body["token"] = t.into();
        }
        self.post(&format!("/arena/battles/{id}/vote"), body)
    }
}

fn ask() -> Value {
    json!({"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 4, "temperature": 0})
}

fn serve(arena: Arena, names: &[&str]) -> Server {
    serve_models(
        ServerConfig::default(),
        arena,
        names.iter().map(|n| entry(n)).collect(),
    )
}

fn serve_models(config: ServerConfig, arena: Arena, models: Vec<ModelEntry>) -> Server {
    let state = Arc::new(AppState::new(config).with_arena(arena));
    state.set_models(models);
    let base = common::serve(state.clone()).base;
    Server { base, state }
}

fn sqlite_arena(path: &std::path::Path, config: ArenaConfig) -> Arena {
    runtime()
        .block_on(Arena::connect(
            &format!("sqlite:{}", path.display()),
            config,
        ))
        .unwrap()
}

fn no_limits() -> ArenaConfig {
    let none = RateLimits {
        per_visitor: 0,
        per_address: 0,
    };
    ArenaConfig {
        turn_limits: none,
        vote_limits: none,
        // Greedy turns: both sides' answers are reproducible (`ask`'s temperature 0).
        min_temperature: 0.0,
        // Short answers keep the tests quick.
        max_tokens_floor: 1,
        turns_in_flight_per_address: 0,
        ..Default::default()
    }
}

fn assert_refused(status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

/// Battles: two served models answer anonymously, a vote reveals them once, votes rate the
/// models on the leaderboard, and a server started on the same store carries them on; the
/// export is FastChat's battle JSON that `camelid_eval::ratings` reads to the same table.
#[test]
fn arena_battles_are_anonymous_and_votes_rate_the_models() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("arena.db");
    // One served model is no arena.
    let single = serve(Arena::default(), &["smol"]);
    let (status, body) = single.post("/arena/battles", ask());
    assert_eq!(status, 400, "{body}");

    let s = serve(sqlite_arena(&db, no_limits()), &["smol-a", "smol-b"]);
    let mut wins: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for round in 0..5 {
        let (id, token, battle) = s.battle(json!({}));
        let text = battle.to_string();
        assert!(
            !text.contains("smol-a") && !text.contains("smol-b"),
            "names leak: {text}"
        );
        assert!(battle["a"]["content"].is_string() && battle["b"]["content"].is_string());
        if round == 0 {
            // A follow-up turn goes to the same battle.
            let mut follow = ask();
            follow["battle_id"] = id.clone().into();
            follow["token"] = token.clone().into();
            let (status, again) = s.post("/arena/battles", follow);
            assert_eq!(
                (status, again["battle_id"].as_str()),
                (200, Some(id.as_str())),
                "{again}"
            );
        }
        let winner = if round % 2 == 0 { "model_a" } else { "tie" };
        let (status, reveal) = s.vote(&id, Some(&token), winner);
        assert_eq!(status, 200, "{reveal}");
        assert_eq!(reveal["anony"], true, "{reveal}");
        let (a, b) = (
            reveal["model_a"].as_str().unwrap(),
            reveal["model_b"].as_str().unwrap(),
        );
        assert!(
            a != b && [a, b].iter().all(|m| ["smol-a", "smol-b"].contains(m)),
            "{reveal}"
        );
        wins.entry(a.into()).or_default().0 += if winner == "model_a" { 2 } else { 1 };
        wins.entry(a.into()).or_default().1 += 2;
        wins.entry(b.into()).or_default().0 += if winner == "model_a" { 0 } else { 1 };
        wins.entry(b.into()).or_default().1 += 2;
    }
    // Bad requests.
    let mut with_model = ask();
    with_model["model"] = "smol-a".into();
    assert_eq!(s.post("/arena/battles", with_model).0, 400);
    let mut bad_token = ask();
    bad_token["token"] = "not-a-token".into();
    let (status, err) = s.post("/arena/battles", bad_token);
    assert_eq!(
        (status, err["error"]["param"].as_str()),
        (400, Some("token"))
    );
    let (status, err) = s.vote("battle-none", Some(Visitor::new().token()), "tie");
    assert_refused(status, &err, 404, "battle_not_found");
    let (fresh, token, _) = s.battle(json!({}));
    let (status, err) = s.vote(&fresh, Some(&token), "draw");
    assert_eq!(
        (status, err["error"]["param"].as_str()),
        (400, Some("winner")),
        "{err}"
    );
    // The leaderboard: five votes, each model's score rate as voted (in halves), ratings in
    // the same order.
    let board = s.leaderboard_with(5);
    assert_eq!(board["battles"], 5, "{board}");
    let rows = board["leaderboard"].as_array().unwrap();
    assert_eq!(rows.len(), wins.len());
    for row in rows {
        let (halves, of) = wins[row["model"].as_str().unwrap()];
        assert!((row["score_rate"].as_f64().unwrap() - halves as f64 / of as f64).abs() < 1e-9);
    }
    let rate = |i: usize| rows[i]["score_rate"].as_f64().unwrap();
    let rating = |i: usize| rows[i]["rating"].as_f64().unwrap();
    assert!(rate(0) >= rate(1));
    assert_eq!(rating(0) - rating(1) > 1e-6, rate(0) > rate(1), "{board}");
    // The export: FastChat's fields, read back by the ratings to the same table.
    let exported = runtime().block_on(s.state.arena.export()).unwrap();
    assert_eq!(exported.len(), 5);
    for b in &exported {
        for field in [
            "question_id",
            "model_a",
            "model_b",
            "winner",
            "judge",
            "tstamp",
        ] {
            assert!(b[field].is_string() || b[field].is_number(), "{field}: {b}");
        }
        assert_eq!(b["anony"], true);
        assert_eq!(b["conversation_a"][0]["content"], "Name a color.", "{b}");
        assert_eq!(b["conversation_a"][1]["role"], "assistant", "{b}");
    }
    assert_eq!(exported[0]["turn"], 2, "the battle with a follow-up");
    let battles =
        camelid_eval::ratings::read_battles(&Value::from(exported.clone()).to_string()).unwrap();
    // Through JSON text as the board came (serde_json's default float parsing may be one ulp
    // off the printed value, the same way for both).
    let refit: Value = serde_json::from_str(
        &serde_json::to_string(&camelid_eval::ratings::leaderboard(
            &battles,
            100,
            camelid_eval::ratings::FASTCHAT_SEED,
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(refit, board["leaderboard"]);
    // The style-controlled fit of the same votes, from the stored conversations.
    let (_, styled, _) = expected_fits(&exported);
    assert_eq!(board["style_control"]["battles"], 5, "{board}");
    assert_eq!(board["style_control"]["leaderboard"], styled);
    // A server started on the same store carries the votes on.
    let restarted = serve(sqlite_arena(&db, no_limits()), &["smol-a", "smol-b"]);
    assert_eq!(
        restarted.leaderboard_with(5)["leaderboard"],
        board["leaderboard"]
    );
}

/// A vote must carry the token its battle's start returned: none, a malformed one or another
/// visitor's is 403, and the battle can still be voted on by its owner.
#[test]
fn a_vote_without_the_battles_token_is_refused() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let (id, token, _) = s.battle(json!({}));
    let (other_id, other_token, _) = s.battle(json!({}));
    let stranger = Visitor::new();
    for t in [
        None,
        Some("0123"),
        Some(stranger.token()),
        Some(other_token.as_str()),
    ] {
        let (status, err) = s.vote(&id, t, "model_a");
        assert_refused(status, &err, 403, "battle_not_yours");
        assert_eq!(err["error"]["param"], "token");
    }
    assert_eq!(s.vote(&id, Some(&token), "model_a").0, 200);
    assert_eq!(s.vote(&other_id, Some(&other_token), "tie").0, 200);
}

/// One vote per battle: another vote is 409 carrying the first (its visitor is owed the
/// names), the same vote again (a retry after a lost reply) gets the first one's answer, and
/// of votes sent together exactly one counts.
#[test]
fn a_second_vote_is_refused() {
    let s = Arc::new(serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]));
    let (id, token, _) = s.battle(json!({}));
    let (status, first) = s.vote(&id, Some(&token), "model_a");
    assert_eq!(status, 200, "{first}");
    let (status, err) = s.vote(&id, Some(&token), "model_b");
    assert_refused(status, &err, 409, "battle_voted");
    assert_eq!(
        err["vote"], first,
        "another vote is told the one that counts, names included"
    );
    let (status, again) = s.vote(&id, Some(&token), "model_a");
    assert_eq!((status, &again), (200, &first), "the retry shows the names");
    let (_, stranger, _) = s.battle(json!({}));
    let (status, err) = s.vote(&id, Some(&stranger), "model_a");
    assert_refused(status, &err, 403, "battle_not_yours");
    // A turn after the vote is refused too.
    let mut follow = ask();
    follow["battle_id"] = id.clone().into();
    follow["token"] = token.clone().into();
    let (status, err) = s.post("/arena/battles", follow);
    assert_refused(status, &err, 409, "battle_voted");

    let (id, token, _) = s.battle(json!({}));
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let (s, id, token) = (s.clone(), id.clone(), token.clone());
            std::thread::spawn(move || {
                s.vote(
                    &id,
                    Some(&token),
                    if i % 2 == 0 { "model_a" } else { "tie" },
                )
                .0
            })
        })
        .collect();
    // The racers that sent the vote that counted are answered as it was; the others 409.
    let mut statuses: Vec<u16> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 409, 409, 409, 409]);
    assert_eq!(s.leaderboard_with(2)["battles"], 2);
}

/// A vote may name the answers its page shows: the `revision` each stored turn's reply
/// carries (whole, and in the stream's `done`). Cast on the battle's current answers it
/// counts; on answers since superseded (a turn stored after its reply was lost to the page)
/// it is 409 `battle_changed` and nothing is cast, as a follow-up or regenerate built on them
/// is; without one (an API client) it is cast as before.
#[test]
fn a_vote_on_answers_the_battle_no_longer_holds_is_refused() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let (id, token, first) = s.battle(json!({}));
    let r1 = first["revision"].as_str().expect("a revision").to_string();
    let body = json!({"battle_id": id, "token": token, "max_tokens": 4, "temperature": 0,
                      "stream": true, "messages": [{"role": "user", "content": "And another?"}]});
    let (status, text) = call(&s.base, "POST", "/arena/battles", None, Some(body));
    assert_eq!(status, 200, "{text}");
    let done: Vec<Value> = sse_payloads(&text)
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter(|ev| ev["done"] == true)
        .collect();
    assert_eq!(done.len(), 1, "{text}");
    let r2 = done[0]["revision"]
        .as_str()
        .expect("a revision")
        .to_string();
    assert_ne!(r1, r2);
    // A follow-up or a regenerate that builds on the superseded answers: refused too.
    let (status, err) = s.post(
        "/arena/battles",
        json!({"battle_id": id, "token": token, "revision": r1, "max_tokens": 2,
               "temperature": 0, "messages": [{"role": "user", "content": "And?"}]}),
    );
    assert_refused(status, &err, 409, "battle_changed");
    let (status, err) = s.post(
        &format!("/arena/battles/{id}/regenerate"),
        json!({"token": token, "revision": r1, "max_tokens": 2, "temperature": 0}),
    );
    assert_refused(status, &err, 409, "battle_changed");
    let vote = |revision: Value| {
        s.post(
            &format!("/arena/battles/{id}/vote"),
            json!({"winner": "model_a", "token": token, "revision": revision}),
        )
    };
    let (status, err) = vote(json!(r1));
    assert_refused(status, &err, 409, "battle_changed");
    let (status, err) = vote(json!(7));
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "revision", "{err}");
    assert!(runtime()
        .block_on(s.state.arena.export())
        .unwrap()
        .is_empty());
    let (status, cast) = vote(json!(r2));
    assert_eq!(status, 200, "{cast}");
    // Without a revision (the API's clients): cast on whatever the battle holds.
    let (id, token, _) = s.battle(json!({}));
    assert_eq!(s.vote(&id, Some(&token), "tie").0, 200);
}

/// A follow-up turn is its battle's owner's: without the token or with another's it is
/// 403; the owner's goes on with both sides' own conversations, kept by the store.
#[test]
fn a_follow_up_by_another_visitor_is_refused() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let (id, token, first) = s.battle(json!({}));
    let follow = |token: Option<&str>| {
        let mut body = json!({"battle_id": id, "max_tokens": 4, "temperature": 0,
                              "messages": [{"role": "user", "content": "And another?"}]});
        if let Some(t) = token {
            body["token"] = t.into();
        }
        s.post("/arena/battles", body)
    };
    let stranger = Visitor::new();
    for t in [None, Some("zz"), Some(stranger.token())] {
        let (status, err) = follow(t);
        assert_refused(status, &err, 403, "battle_not_yours");
    }
    let (status, second) = follow(Some(&token));
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["token"], token.as_str());
    assert_eq!(s.vote(&id, Some(&token), "tie").0, 200);
    let exported = runtime().block_on(s.state.arena.export()).unwrap();
    let conv = &exported[0]["conversation_a"];
    assert_eq!(exported[0]["turn"], 2);
    let contents: Vec<&Value> = conv
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["content"])
        .collect();
    assert_eq!(
        contents,
        [
            &json!("Name a color."),
            &first["a"]["content"],
            &json!("And another?"),
            &second["a"]["content"]
        ],
        "{conv}"
    );
}

/// A turn's output is capped (`--arena-max-tokens`): asking for more is a 400 naming the
/// field, asking for nothing gets the cap (not the rest of the context, for both models);
/// an answer the cap cut ends before the word it cut.
#[test]
fn turns_generate_at_most_the_arena_cap() {
    let config = ArenaConfig {
        max_tokens: 3,
        ..no_limits()
    };
    let s = serve(Arena::in_memory(config), &["smol-a", "smol-b"]);
    // The page reads the cap (and the temperature floor, none here) to bound its settings.
    let (status, limits) = call(&s.base, "GET", "/arena/config", None, None);
    assert_eq!(status, 200, "{limits}");
    let limits: Value = serde_json::from_str(&limits).unwrap();
    assert_eq!(
        limits,
        json!({"min_temperature": 0.0, "max_tokens": 3, "max_tokens_floor": 1, "max_turns": 50,
               "max_input_chars": 12000})
    );
    for field in ["max_tokens", "max_completion_tokens"] {
        let mut body = ask();
        body.as_object_mut().unwrap().remove("max_tokens");
        body[field] = 4.into();
        let (status, err) = s.post("/arena/battles", body);
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["param"], field, "{err}");
    }
    let story = "Tell me a long story about a llama who climbs a mountain.";
    let (status, b) = s.post(
        "/arena/battles",
        json!({"messages": [{"role": "user", "content": story}], "temperature": 0}),
    );
    assert_eq!(status, 200, "{b}");
    // The same greedy answer through the API, of which the battle drops the word the limit
    // cut (where a side stopped within a word is where its tokenizer splits it).
    let (status, direct) = s.post(
        "/v1/chat/completions",
        json!({"model": "smol-a", "messages": [{"role": "user", "content": story}],
               "temperature": 0, "max_tokens": 3}),
    );
    assert_eq!(status, 200, "{direct}");
    let full = direct["choices"][0]["message"]["content"].as_str().unwrap();
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    let last_word = chars
        .windows(2)
        .rfind(|w| w[0].1.is_whitespace() && !w[1].1.is_whitespace())
        .map_or(0, |w| w[1].0);
    let kept = &full[..last_word];
    assert_ne!(kept, full, "the answer's last word: {full:?}");
    for side in ["a", "b"] {
        assert_eq!(b[side]["finish_reason"], "length", "{b}");
        assert_eq!(b[side]["content"], kept, "{side} of {full:?}: {b}");
    }
}

/// A battle's stored conversations stay bounded: a turn's text is refused past
/// `--arena-max-input-chars` (counted in characters, not bytes), a follow-up past
/// `--arena-max-turns` (the battle can still be voted on), before either counts against the
/// visitor's limits.
#[test]
fn a_battle_takes_at_most_its_turns_and_characters() {
    let three = RateLimits {
        per_visitor: 0,
        per_address: 3,
    };
    let config = ArenaConfig {
        max_turns: 2,
        max_input_chars: 12,
        turn_limits: three,
        ..no_limits()
    };
    let s = serve(Arena::in_memory(config), &["smol-a", "smol-b"]);
    let turn = |texts: &[&str], battle: Option<(&str, &str)>| {
        let messages: Vec<Value> = texts
            .iter()
            .map(|t| json!({"role": "user", "content": t}))
            .collect();
        let mut body = json!({"messages": messages, "max_tokens": 2, "temperature": 0});
        if let Some((id, token)) = battle {
            body["battle_id"] = id.into();
            body["token"] = token.into();
        }
        s.post("/arena/battles", body)
    };
    // 13 characters, whether in one message or over two.
    for texts in [&["Name a color?"][..], &["Name a", " color?"]] {
        let (status, err) = turn(texts, None);
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["param"], "messages", "{err}");
    }
    // 12 characters of two bytes each.
    let (status, first) = turn(&["éééééééééééé"], None);
    assert_eq!(status, 200, "{first}");
    let id = first["battle_id"].as_str().unwrap();
    let token = first["token"].as_str().unwrap();
    let (status, second) = turn(&["And another?"], Some((id, token)));
    assert_eq!(status, 200, "{second}");
    let (status, err) = turn(&["And a third?"], Some((id, token)));
    assert_refused(status, &err, 400, "battle_turn_limit");
    // Three turns a minute from this address: the refusals spent none of them.
    let (status, other) = turn(&["Name a color"], None);
    assert_eq!(status, 200, "{other}");
    assert_eq!(s.vote(id, Some(token), "tie").0, 200);
}

/// A turn that is wrong whichever models would answer it (no message, `max_tokens` 0, a
/// sampling field out of range) is a 400 naming the field, before a battle is stored or a
/// turn counted against the visitor's limit: with one turn allowed, a good turn still
/// passes after them.
#[test]
fn turns_wrong_for_any_model_are_refused_before_they_count() {
    let one = RateLimits {
        per_visitor: 1,
        per_address: 1,
    };
    let config = ArenaConfig {
        turn_limits: one,
        ..no_limits()
    };
    let s = serve(Arena::in_memory(config), &["smol-a", "smol-b"]);
    let user = json!([{"role": "user", "content": "Hi"}]);
    for (body, param) in [
        (json!({"messages": []}), "messages"),
        (json!({"messages": user, "max_tokens": 0}), "max_tokens"),
        (
            json!({"messages": user, "max_completion_tokens": 0}),
            "max_completion_tokens",
        ),
        (json!({"messages": user, "temperature": 9}), "temperature"),
        (json!({"messages": user, "top_p": 2}), "top_p"),
        (
            json!({"messages": user, "frequency_penalty": 3}),
            "frequency_penalty",
        ),
    ] {
        let (status, err) = s.post("/arena/battles", body.clone());
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["param"], param, "{body}: {err}");
    }
    let (status, b) = s.post("/arena/battles", ask());
    assert_eq!(status, 200, "the bad turns were counted: {b}");
}

/// Under the arena's temperature floor (0.7 by default) a turn whose answers could be
/// replayed is refused before it counts, naming the field: a greedy or low temperature, and
/// the samplers that truncate towards greedy; a regenerate too. At the floor, or with the
/// models' own defaults, turns pass.
#[test]
fn turns_sampled_too_greedily_to_stay_anonymous_are_refused() {
    let config = ArenaConfig {
        turn_limits: RateLimits {
            per_visitor: 2,
            per_address: 2,
        },
        min_temperature: ArenaConfig::default().min_temperature,
        ..no_limits()
    };
    assert_eq!(config.min_temperature, 0.7);
    let s = serve(Arena::in_memory(config), &["smol-a", "smol-b"]);
    let (status, limits) = call(&s.base, "GET", "/arena/config", None, None);
    assert_eq!(status, 200, "{limits}");
    let limits: Value = serde_json::from_str(&limits).unwrap();
    assert_eq!(
        limits["min_temperature"],
        json!(0.7),
        "the floor the page offers: {limits}"
    );
    let user = json!([{"role": "user", "content": "Hi"}]);
    let turn = |extra: Value| {
        let mut body = json!({"messages": user, "max_tokens": 2});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, param) in [
        (json!({"temperature": 0}), "temperature"),
        (json!({"temperature": 0.5}), "temperature"),
        (json!({"top_p": 0.5}), "top_p"),
        (json!({"top_k": 1}), "top_k"),
        (json!({"min_p": 0.3}), "min_p"),
    ] {
        let (status, err) = s.post("/arena/battles", turn(extra.clone()));
        assert_eq!(status, 400, "{extra}: {err}");
        assert_eq!(err["error"]["param"], param, "{extra}: {err}");
    }
    let (id, token, _) = s.battle(turn(json!({"temperature": 0.7, "top_p": 0.95, "top_k": 0})));
    let (status, err) = s.post(
        &format!("/arena/battles/{id}/regenerate"),
        json!({"token": token, "temperature": 0.1}),
    );
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "temperature", "{err}");
    let (status, b) = s.post("/arena/battles", turn(json!({})));
    assert_eq!(status, 200, "the refused turns were counted: {b}");
}

/// A turn that leaves the sampling out takes each model's own, raised where the model's
/// generation config is greedy (a temperature of 0, `top_k` 1, a tiny `top_p`): two copies
/// of one model with such a config answer alike at the floor 0 (greedy), and not alike (not
/// in all of three battles) under the default floor.
#[test]
fn a_greedy_generation_config_is_raised_to_the_temperature_floor() {
    let configs: [fn(&mut camelid_model::SamplingDefaults); 3] = [
        |d| d.temperature = Some(0.0),
        |d| d.top_k = Some(1),
        |d| d.top_p = Some(0.01),
    ];
    for (c, config) in configs.iter().enumerate() {
        let greedy = |name: &str| {
            let mut e = entry(name);
            config(&mut e.sampling_defaults);
            e
        };
        for floor in [0.0, ArenaConfig::default().min_temperature] {
            let s = serve_models(
                ServerConfig::default(),
                Arena::in_memory(ArenaConfig {
                    min_temperature: floor,
                    ..no_limits()
                }),
                vec![greedy("smol-a"), greedy("smol-b")],
            );
            let alike = (0..3)
                .map(|_| {
                    let (status, b) = s.post(
                        "/arena/battles",
                        json!({"messages": [{"role": "user", "content": "Tell me a story."}],
                               "max_tokens": 48}),
                    );
                    assert_eq!(status, 200, "{b}");
                    b["a"]["content"] == b["b"]["content"]
                })
                .filter(|&same| same)
                .count();
            if floor == 0.0 {
                assert_eq!(alike, 3, "config {c}: greedy sides differ");
            } else {
                assert!(alike < 3, "config {c}, floor {floor}: answered greedily");
            }
        }
    }
}

/// A first turn's conversation: "Hi", answered `a`.
fn hi_answered(a: &str) -> Vec<Value> {
    vec![
        json!({"role": "user", "content": "Hi"}),
        json!({"role": "assistant", "content": a}),
    ]
}

/// A turn let in while its battle was open is stored even if its answers outlast the
/// battle's time to live (its visitor waited for them); a turn let in after is 410.
#[test]
fn a_turn_admitted_before_expiry_is_stored_after_it() {
    let config = ArenaConfig {
        battle_ttl: Duration::from_secs(1),
        ..no_limits()
    };
    let arena = Arena::in_memory(config);
    runtime().block_on(async {
        let visitor = Visitor::new();
        let battle = arena
            .start(&visitor, "smol-a".into(), "smol-b".into())
            .await
            .unwrap();
        let turn = hi_answered;
        // Answers that took longer than the time to live.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        arena
            .record_turn(&battle, &visitor, &turn("a"), &turn("b"), false)
            .await
            .expect("a turn admitted while the battle was open is stored");
        // The stored turn opened the battle for another time to live.
        let next = arena.resume(&battle.id, &visitor).await.unwrap();
        assert_eq!(next.turns, 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let err = arena.resume(&battle.id, &visitor).await.unwrap_err();
        assert_eq!(err.status.as_u16(), 410, "{}", err.message);
    });
}

/// Turns and votes over the limits answer 429 with Retry-After: per visitor (the token),
/// then per address (new tokens do not get around it).
#[test]
fn rate_limits_answer_429() {
    let config = ArenaConfig {
        turn_limits: RateLimits {
            per_visitor: 2,
            per_address: 3,
        },
        vote_limits: RateLimits {
            per_visitor: 1,
            per_address: 0,
        },
        ..no_limits()
    };
    let s = serve(Arena::in_memory(config), &["smol-a", "smol-b"]);
    let (first, token, _) = s.battle(json!({}));
    let (second, _, _) = s.battle(json!({ "token": token }));
    let ((status, err), retry) = s.post_with_headers(
        "/arena/battles",
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "token": token}),
    );
    assert_refused(status, &err, 429, "rate_limit_exceeded");
    assert_eq!(err["error"]["type"], "rate_limit_error");
    assert_eq!(retry.as_deref(), Some("60"));
    // A new visitor from the same address: the address's third turn passes, its fourth not.
    s.battle(json!({}));
    let (status, err) = s.post("/arena/battles", ask());
    assert_refused(status, &err, 429, "rate_limit_exceeded");
    // Votes: one a minute for this visitor.
    assert_eq!(s.vote(&first, Some(&token), "model_a").0, 200);
    let (status, err) = s.vote(&second, Some(&token), "model_a");
    assert_refused(status, &err, 429, "rate_limit_exceeded");
}

/// Votes and follow-ups naming battles that are not the sender's (made-up ids, another's
/// battle, random tokens) are refused without spending the limits: behind a proxy every
/// visitor shares one address, and a flood of them would otherwise close the arena to all.
#[test]
fn requests_for_battles_not_theirs_do_not_spend_the_limits() {
    let few = RateLimits {
        per_visitor: 0,
        per_address: 2,
    };
    let config = ArenaConfig {
        turn_limits: few,
        vote_limits: few,
        ..no_limits()
    };
    let s = serve(Arena::in_memory(config), &["smol-a", "smol-b"]);
    let (id, token, _) = s.battle(json!({}));
    for i in 0..6 {
        let made_up = format!("battle-{:032x}", 7 + i);
        let random_token = format!("{:064x}", 1000 + i);
        let (status, err) = s.vote(&made_up, Some(&random_token), "model_a");
        assert_refused(status, &err, 404, "battle_not_found");
        let (status, err) = s.vote(&id, Some(&random_token), "model_a");
        assert_refused(status, &err, 403, "battle_not_yours");
        let mut follow = ask();
        follow["battle_id"] = made_up.into();
        follow["token"] = random_token.into();
        let (status, err) = s.post("/arena/battles", follow);
        assert_refused(status, &err, 404, "battle_not_found");
    }
    // The address's turns and votes are all still there: a follow-up, then the vote.
    let mut follow = ask();
    follow["battle_id"] = id.clone().into();
    follow["token"] = token.clone().into();
    let (status, again) = s.post("/arena/battles", follow);
    assert_eq!(status, 200, "{again}");
    let (status, reveal) = s.vote(&id, Some(&token), "model_a");
    assert_eq!(status, 200, "{reveal}");
}

/// Behind a proxy, the per-address limits count the `X-Forwarded-For` address the proxy
/// added, not the proxy's. With trusted proxies named, a peer outside them (a client that
/// reaches the server without the proxy) counts as itself whatever header it writes; from a
/// trusted peer, the proxies' own entries are passed over.
#[test]
fn forwarded_addresses_count_only_from_trusted_proxies() {
    let one_turn = |trusted: &[&str]| ArenaConfig {
        turn_limits: RateLimits {
            per_visitor: 0,
            per_address: 1,
        },
        trust_forwarded_for: true,
        trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
        ..no_limits()
    };
    let turn_from = |s: &Server, forwarded: &str| {
        runtime().block_on(async {
            let r = reqwest::Client::new()
                .post(format!("{}/arena/battles", s.base))
                .header("x-forwarded-for", forwarded)
                .json(&ask())
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        })
    };
    // Any peer trusted (no list): two visitors behind the proxy get a turn each.
    let s = serve(Arena::in_memory(one_turn(&[])), &["smol-a", "smol-b"]);
    assert_eq!(turn_from(&s, "198.51.100.7"), 200);
    assert_eq!(turn_from(&s, "198.51.100.8"), 200);
    assert_eq!(turn_from(&s, "198.51.100.8"), 429);
    drop(s);
    // The test's peer (127.0.0.1) is not a trusted proxy: its made-up addresses are its own.
    let s = serve(
        Arena::in_memory(one_turn(&["10.0.0.0/8"])),
        &["smol-a", "smol-b"],
    );
    assert_eq!(turn_from(&s, "198.51.100.7"), 200);
    assert_eq!(turn_from(&s, "198.51.100.9"), 429);
    drop(s);
    // A trusted one: its own entries (another proxy in 127.0.0.0/8) are passed over.
    let s = serve(
        Arena::in_memory(one_turn(&["127.0.0.0/8"])),
        &["smol-a", "smol-b"],
    );
    assert_eq!(turn_from(&s, "198.51.100.7, 127.0.0.5"), 200);
    assert_eq!(turn_from(&s, "198.51.100.8, 127.0.0.5"), 200);
    assert_eq!(turn_from(&s, "203.0.113.1, 198.51.100.8"), 429);
}

/// While an update rolls through a fleet, its servers serve different models: a follow-up on
/// a server without one of its battle's models is a 503 to try again (not the visitor's
/// fault), naming neither model. That it came at all tells the visitor a side is a model
/// this server lacks, so the battle's vote is no longer rated, on any server; and the turn
/// counted against the limits (else the probe is free).
#[test]
fn a_follow_up_where_its_models_are_not_served_is_retried_and_unrated() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("arena.db");
    let old = serve(sqlite_arena(&db, no_limits()), &["smol-a", "smol-b"]);
    let one_turn = ArenaConfig {
        turn_limits: RateLimits {
            per_visitor: 0,
            per_address: 1,
        },
        ..no_limits()
    };
    let new = serve(sqlite_arena(&db, one_turn), &["smol-a", "smol-c"]);
    // A battle of smol-a and smol-b (the only pair the old server has).
    let (id, token, _) = old.battle(json!({}));
    let mut follow = ask();
    follow["battle_id"] = id.clone().into();
    follow["token"] = token.clone().into();
    let ((status, err), retry) = new.post_with_headers("/arena/battles", follow.clone());
    assert_refused(status, &err, 503, "battle_models_unavailable");
    assert!(retry.is_some(), "{err}");
    let text = err.to_string();
    assert!(!text.contains("smol-"), "the refusal names a model: {text}");
    // The address's one turn a minute went to it.
    let (status, err) = new.post("/arena/battles", follow.clone());
    assert_refused(status, &err, 429, "rate_limit_exceeded");
    let (status, again) = old.post("/arena/battles", follow);
    assert_eq!(status, 200, "{again}");
    let (status, reveal) = old.vote(&id, Some(&token), "tie");
    assert_eq!((status, &reveal["anony"]), (200, &json!(false)), "{reveal}");
}

/// A new battle draws only chat models whose engine runs: one whose engine stopped (here it
/// panics at its first step) is left out of the draw, as FastChat gives a model in an outage
/// no weight, instead of failing about every other battle; so is an embedding model.
#[test]
fn a_stopped_engine_is_not_drawn_into_new_battles() {
    let broken = common::model_entry("broken", &[], 512, |_| camelid_engine::EngineConfig {
        kv_cache_mb: 32,
        panic_at_step: Some(1),
        ..Default::default()
    });
    // An embedding model (its files name a pooling) served beside them is no contestant.
    let mut embedder = entry("embedder");
    embedder.details.pooling = Some(camelid_model::Pooling::Mean);
    let s = serve_models(
        ServerConfig::default(),
        Arena::in_memory(no_limits()),
        vec![broken, embedder, entry("smol-a"), entry("smol-b")],
    );
    // A request to it stops its engine.
    let body = json!({"model": "broken", "max_tokens": 2,
        "messages": [{"role": "user", "content": "Hi"}]});
    let (status, _) = s.post("/v1/chat/completions", body);
    assert!(status >= 500, "{status}");
    let models = s.state.models().unwrap();
    assert!(!models
        .iter()
        .find(|m| m.name == "broken")
        .unwrap()
        .engine
        .is_running());
    for _ in 0..12 {
        let (id, token, _) = s.battle(json!({}));
        let (status, reveal) = s.vote(&id, Some(&token), "tie");
        assert_eq!(status, 200, "{reveal}");
        for side in ["model_a", "model_b"] {
            assert!(
                !["broken", "embedder"].contains(&reveal[side].as_str().unwrap()),
                "{reveal}"
            );
        }
    }
}

/// A battle expires after its time to live: a vote or a turn then is 410; once swept, 404.
#[test]
fn an_expired_battle_answers_410() {
    let config = ArenaConfig {
        battle_ttl: Duration::from_secs(3),
        ..no_limits()
    };
    let s = serve(Arena::in_memory(config), &["smol-a", "smol-b"]);
    let (id, token, _) = s.battle(json!({}));
    // Expired (410) from one time to live after the turn until the sweep removes it a time to
    // live later (404): a window of 3 s, wide enough for a loaded machine.
    std::thread::sleep(Duration::from_millis(3500));
    let (status, err) = s.vote(&id, Some(&token), "model_a");
    assert_refused(status, &err, 410, "battle_expired");
    let mut follow = ask();
    follow["battle_id"] = id.clone().into();
    follow["token"] = token.clone().into();
    let (status, err) = s.post("/arena/battles", follow);
    assert_refused(status, &err, 410, "battle_expired");
    // Swept once it has been expired for a time to live.
    std::thread::sleep(Duration::from_millis(3000));
    runtime().block_on(s.state.arena.sweep()).unwrap();
    let (status, err) = s.vote(&id, Some(&token), "model_a");
    assert_refused(status, &err, 404, "battle_not_found");
}

/// Battles are never pushed out by other battles: after more new battles than the old
/// in-memory store kept (10,000), an open one is still there to vote on.
#[test]
fn a_flood_of_new_battles_does_not_evict_an_open_one() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let (id, token, _) = s.battle(json!({}));
    runtime().block_on(async {
        for _ in 0..12_000 {
            s.state
                .arena
                .start(&Visitor::new(), "smol-a".into(), "smol-b".into())
                .await
                .unwrap();
        }
    });
    let (status, reveal) = s.vote(&id, Some(&token), "model_b");
    assert_eq!(status, 200, "{reveal}");
}

/// A vote whose answers name a served model is kept (exported, `anony: false`) but left out
/// of the leaderboard.
#[test]
fn a_vote_whose_answers_name_a_model_is_kept_but_not_rated() {
    // What the model answers (both sides alike at temperature 0): one of its words becomes a
    // served model's name.
    let probe = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let (_, _, b) = probe.battle(json!({}));
    let answer = b["a"]["content"].as_str().unwrap().to_lowercase();
    let word = answer
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| w.len() >= 3)
        .unwrap_or_else(|| panic!("no word in {answer:?}"))
        .to_string();
    // The word as a model's alias names it too.
    let aliased = serve_models(
        ServerConfig::default(),
        Arena::in_memory(no_limits()),
        vec![
            common::model_entry("smol-a", &[&word], 512, |_| camelid_engine::EngineConfig {
                kv_cache_mb: 32,
                ..Default::default()
            }),
            entry("smol-b"),
        ],
    );
    let (id, token, _) = aliased.battle(json!({}));
    let (status, reveal) = aliased.vote(&id, Some(&token), "model_a");
    assert_eq!((status, &reveal["anony"]), (200, &json!(false)), "{reveal}");
    drop(aliased);
    let s = serve(Arena::in_memory(no_limits()), &[&word, "smol-b"]);
    let (id, token, _) = s.battle(json!({}));
    let (status, reveal) = s.vote(&id, Some(&token), "model_a");
    assert_eq!((status, &reveal["anony"]), (200, &json!(false)), "{reveal}");
    let board = s.leaderboard_with(1);
    assert_eq!(board["battles"], 0, "{board}");
    assert_eq!(board["leaderboard"], json!([]), "{board}");
    let exported = runtime().block_on(s.state.arena.export()).unwrap();
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["anony"], false);
}

/// The leaderboard is fitted when the votes change, not per request: with no new vote it
/// stays the same fit (past the store's poll interval); a vote brings a new one.
#[test]
fn the_leaderboard_is_fitted_when_votes_change_not_per_request() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let (id, token, _) = s.battle(json!({}));
    assert_eq!(s.vote(&id, Some(&token), "model_a").0, 200);
    let first = s.leaderboard_with(1);
    assert!(first["computed_at"].is_number(), "{first}");
    std::thread::sleep(Duration::from_secs(6));
    let later = s.leaderboard();
    assert_eq!(
        later["computed_at"], first["computed_at"],
        "refitted without a vote"
    );
    let (id, token, _) = s.battle(json!({}));
    assert_eq!(s.vote(&id, Some(&token), "tie").0, 200);
    let second = s.leaderboard_with(2);
    assert!(second["computed_at"].as_f64() > first["computed_at"].as_f64());
}

/// What the board should hold for the exported votes: the plain fit of every anonymous vote
/// and the style-controlled fit of those with both answers, as `camelid_eval` computes them
/// (through JSON text, as the board comes).
fn expected_fits(exported: &[Value]) -> (Value, Value, [f64; 4]) {
    use camelid_eval::{ratings, style};
    let records = ratings::select_records(
        ratings::read_battle_records(&Value::from(exported.to_vec()).to_string()).unwrap(),
        false,
    );
    let opts = ratings::RatingOptions {
        convention: ratings::BtConvention::FastChat,
        rounds: 100,
        seed: ratings::FASTCHAT_SEED,
    };
    let battles: Vec<_> = records.iter().map(|r| r.battle.clone()).collect();
    let answered: Vec<_> = records
        .into_iter()
        .filter(|r| style::has_answers(&r.raw))
        .collect();
    let (styled, coefficients) = style::style_controlled(&answered, &opts).unwrap();
    (
        through_text(&ratings::leaderboard_with(&battles, &opts)),
        through_text(&styled),
        coefficients,
    )
}

/// A value through JSON text (serde_json's default float parsing may be one ulp off the
/// printed value, the same way for the board's reply).
fn through_text<T: serde::Serialize>(v: &T) -> Value {
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

/// Style control on `/arena/leaderboard`: voters here pick the longer answer, and `wordy`
/// always writes the longer one. The reply carries the plain fit, which credits `wordy`, and
/// the style-controlled one, which credits length instead, computed from the stored
/// conversations; votes without answers count in the plain fit only.
#[test]
fn the_leaderboard_carries_the_style_controlled_fit() {
    let conversation = |words: usize| {
        json!([{"role": "user", "content": "q"},
               {"role": "assistant", "content": "word ".repeat(words)}])
    };
    let mut records = vec![];
    let mut battle = |a: &str, b: &str, winner: &str, lens: Option<(usize, usize)>| {
        let n = records.len();
        let mut r = json!({"question_id": format!("q{n}"), "model_a": a, "model_b": b,
            "winner": winner, "anony": true, "tstamp": n as f64});
        if let Some((la, lb)) = lens {
            r["conversation_a"] = conversation(la);
            r["conversation_b"] = conversation(lb);
        }
        records.push(r);
    };
    for k in 0..120 {
        let (la, lb) = if k % 2 == 0 { (300, 50) } else { (50, 300) };
        let w = if la > lb { "model_a" } else { "model_b" };
        battle(["x", "y"][k % 2], "z", w, Some((la, lb)));
        let (lw, lo, w) = if k % 10 == 0 {
            (100, 100, "model_b")
        } else {
            (400, 60, "model_a")
        };
        battle("wordy", ["x", "y", "z"][k % 3], w, Some((lw, lo)));
    }
    // Imported battles without conversations.
    battle("x", "wordy", "model_a", None);
    battle("y", "wordy", "tie", None);
    let arena = Arena::in_memory(ArenaConfig::default());
    assert_eq!(
        runtime().block_on(arena.import(&records)).unwrap(),
        records.len() as u64
    );
    let s = serve_models(ServerConfig::default(), arena, vec![]);
    let board = s.leaderboard_with(records.len() as u64);
    let sc = &board["style_control"];
    assert_eq!(board["battles"], records.len(), "{board}");
    assert_eq!(sc["battles"], records.len() - 2, "{sc}");
    let (plain, styled, coefficients) = expected_fits(&records);
    assert_eq!(board["leaderboard"], plain);
    assert_eq!(sc["leaderboard"], styled);
    for (k, e) in camelid_eval::style::ELEMENTS.iter().enumerate() {
        let c = sc["coefficients"][e].as_f64().unwrap();
        assert!(
            (c - coefficients[k]).abs() < 1e-12,
            "{e}: {c} vs {coefficients:?}"
        );
    }
    assert!(coefficients[0] > 1.0, "length pays: {coefficients:?}");
    let rating = |rows: &Value, m: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == m)
            .unwrap()["rating"]
            .as_f64()
            .unwrap()
    };
    let lead = |rows: &Value| rating(rows, "wordy") - rating(rows, "x");
    assert_eq!(board["leaderboard"][0]["model"], "wordy", "{board}");
    let (plain_lead, styled_lead) = (lead(&board["leaderboard"]), lead(&sc["leaderboard"]));
    assert!(
        styled_lead < plain_lead / 2.0,
        "style control takes back the lead bought with length: {plain_lead} vs {styled_lead}"
    );
}

/// `import` reads FastChat battles (a torn last line left out by the reader), keeps their
/// fields, adds nothing the second time; `export` gives them back.
#[test]
fn fastchat_battles_import_once_and_export_back() {
    let dir = tempfile::tempdir().unwrap();
    let arena = sqlite_arena(&dir.path().join("a.db"), ArenaConfig::default());
    let text = [
        r#"{"question_id": "q1", "model_a": "x", "model_b": "y", "winner": "model_a", "anony": true, "tstamp": 1.5, "judge": "arena_user_1", "conversation_a": [{"role": "user", "content": "hi"}], "conversation_b": [], "turn": 1}"#,
        r#"{"model_a": "y", "model_b": "x", "winner": "tie (bothbad)", "anony": false, "tstamp": 2.5}"#,
        r#"{"model_a": "x", "model_b": "#,
    ]
    .join("\n");
    let read = camelid_eval::ratings::read_records(&text).unwrap();
    assert_eq!(read.torn_last_line, Some(3));
    runtime().block_on(async {
        assert_eq!(arena.import(&read.records).await.unwrap(), 2);
        assert_eq!(arena.import(&read.records).await.unwrap(), 0);
        let out = arena.export().await.unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["question_id"], "q1");
        assert_eq!(out[0]["conversation_a"][0]["content"], "hi");
        assert_eq!(out[0]["judge"], "arena_user_1");
        assert_eq!(
            (&out[1]["winner"], &out[1]["anony"], &out[1]["tstamp"]),
            (&json!("tie (bothbad)"), &json!(false), &json!(2.5))
        );
        // Exported battles imported elsewhere are the same battles.
        let other = Arena::connect(
            &format!("sqlite:{}", dir.path().join("b.db").display()),
            ArenaConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(other.import(&out).await.unwrap(), 2);
        assert_eq!(other.export().await.unwrap(), out);
        assert!(arena
            .import(&[json!({"model_a": "x", "model_b": "y", "winner": "draw"})])
            .await
            .unwrap_err()
            .contains("winner"));
        // An `mtbench judge` judgment is an LLM's verdict, not a vote: named for what it is.
        let judgment = json!({"question_id": 81, "model_1": "x", "model_2": "y",
                              "g1_winner": "model_1", "g2_winner": "model_2",
                              "judge": ["gpt-4", "pair-v2"], "turn": 1, "tstamp": 0.0});
        let e = arena.import(&[judgment]).await.unwrap_err();
        assert!(
            e.contains("mtbench judge") && e.contains("arena ratings"),
            "{e}"
        );
        // MT-bench's human judgments number the question (81–160), many battles to each:
        // they are all added (once), not taken for one battle.
        let human: Vec<Value> = ["expert_0", "expert_1", "author_2"]
            .iter()
            .flat_map(|judge| {
                [1, 2].map(|turn| {
                    json!({"question_id": 81, "model_a": "x", "model_b": "y",
                           "winner": "model_b", "judge": judge, "turn": turn})
                })
            })
            .collect();
        let fresh = Arena::connect(
            &format!("sqlite:{}", dir.path().join("c.db").display()),
            ArenaConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(fresh.import(&human).await.unwrap(), 6);
        assert_eq!(fresh.import(&human).await.unwrap(), 0);
    });
}

/// `(status, body)` of a request with optional bearer key.
fn call(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    runtime().block_on(async {
        let c = reqwest::Client::new();
        let mut r = match method {
            "GET" => c.get(format!("{base}{path}")),
            _ => c.post(format!("{base}{path}")),
        };
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// The `data:` payloads of a server-sent-events body, `[DONE]` included.
fn sse_payloads(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .collect()
}

/// With `stream: true` both sides arrive as events: the battle's id and token first, then
/// each side's pieces and end, `{"done": true, "revision"}` once the turn is stored, `[DONE]`. The pieces
/// add up to what the same (greedy) battle answers whole, the turn can be voted on, and no
/// event carries anything but those fields.
#[test]
fn a_battle_streams_both_sides() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let mut body = ask();
    body["max_tokens"] = 12.into();
    let (_, _, whole) = s.battle(body.as_object().unwrap().clone().into());
    body["stream"] = true.into();
    let (status, text) = call(&s.base, "POST", "/arena/battles", None, Some(body));
    assert_eq!(status, 200, "{text}");
    let payloads = sse_payloads(&text);
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{text}"
    );
    let events: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let head = &events[0];
    let (id, token) = (
        head["battle_id"].as_str().unwrap(),
        head["token"].as_str().unwrap(),
    );
    let done = events.last().unwrap();
    assert_eq!(done["done"], true, "{text}");
    assert!(
        done["revision"].as_str().is_some_and(|r| r.len() == 16),
        "{text}"
    );
    let mut answers = [String::new(), String::new()];
    let mut deltas: [Vec<String>; 2] = Default::default();
    let mut finishes = [None, None];
    for ev in &events[1..events.len() - 1] {
        let side = match ev["side"].as_str() {
            Some("a") => 0,
            Some("b") => 1,
            _ => panic!("an event of neither side: {ev}"),
        };
        let keys: Vec<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
        if let Some(d) = ev["delta"].as_str() {
            assert_eq!(keys.len(), 2, "{ev}");
            assert!(
                finishes[side].is_none(),
                "a piece after its side's end: {text}"
            );
            answers[side] += d;
            deltas[side].push(d.to_string());
        } else {
            assert_eq!(keys.len(), 2, "{ev}");
            finishes[side] = Some(ev["finish_reason"].as_str().unwrap().to_string());
        }
    }
    assert!(finishes.iter().all(Option::is_some), "{text}");
    // Both names serve the same model greedily: every side answers as the whole battle did.
    for (side, got) in ["a", "b"].iter().zip(&answers) {
        assert_eq!(
            Some(got.as_str()),
            whole[side]["content"].as_str(),
            "{text}"
        );
    }
    assert!(!answers[0].is_empty(), "{text}");
    // Pieces follow the text, not the tokens (which would count each side's tokens and show
    // its tokenizer's splits): a piece ends where a word starts, or at 16 characters.
    for d in &deltas {
        for w in d.windows(2) {
            let ends_word =
                w[0].ends_with(char::is_whitespace) && !w[1].starts_with(char::is_whitespace);
            assert!(
                !w[0].is_empty() && (ends_word || w[0].chars().count() == 16),
                "pieces cut inside a word: {d:?}"
            );
        }
    }
    let (status, reveal) = s.vote(id, Some(token), "tie");
    assert_eq!(status, 200, "the streamed turn was stored: {reveal}");
}

/// Votes have slots of their own: with every generation slot taken (two unread streams on a
/// server of two), a vote on an answered battle is still taken, not refused for load.
#[test]
fn a_vote_is_taken_while_generation_fills_every_slot() {
    let s = serve_models(
        ServerConfig {
            max_concurrent: 2,
            ..Default::default()
        },
        Arena::in_memory(no_limits()),
        vec![entry("smol-a"), entry("smol-b")],
    );
    let (id, token, _) = s.battle(json!({}));
    let long = json!({"model": "smol-a", "messages": [{"role": "user", "content": "Count."}],
                      "max_tokens": 400, "ignore_eos": true, "stream": true});
    let held: Vec<_> = (0..2)
        .map(|_| {
            runtime().block_on(async {
                let r = common::client()
                    .post(format!("{}/v1/chat/completions", s.base))
                    .json(&long)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r
            })
        })
        .collect();
    let mut short = long.clone();
    short["stream"] = false.into();
    short["max_tokens"] = 1.into();
    let (status, body) = s.post("/v1/chat/completions", short);
    assert_eq!(status, 429, "both slots are generating: {body}");
    let (status, reveal) = s.vote(&id, Some(&token), "tie");
    assert_eq!(status, 200, "{reveal}");
    drop(held);
}

/// Reads a streamed battle turn until its first piece; the response, what was read.
async fn until_first_piece(
    c: &reqwest::Client,
    base: &str,
    body: Value,
) -> (reqwest::Response, String) {
    until_first_piece_at(c, &format!("{base}/arena/battles"), body).await
}

/// [`until_first_piece`] of a request to `url` (a battle's regenerate).
async fn until_first_piece_at(
    c: &reqwest::Client,
    url: &str,
    body: Value,
) -> (reqwest::Response, String) {
    let mut r = c.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    while !seen.contains("\"delta\"") {
        let chunk = r
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended before a piece");
        seen += &String::from_utf8_lossy(&chunk);
    }
    (r, seen)
}

/// A tie vote on battle `id` from the client: (status, body).
async fn vote_tie(c: &reqwest::Client, base: &str, id: &str, token: &str) -> (u16, Value) {
    let r = c
        .post(format!("{base}/arena/battles/{id}/vote"))
        .json(&json!({"winner": "tie", "token": token}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A tie vote on battle `id` once its turn is no longer being answered (a turn its client
/// left ends at the server's next piece): the vote's reply.
async fn vote_once_answered(c: &reqwest::Client, base: &str, id: &str, token: &str) -> Value {
    let t = Instant::now();
    loop {
        let (status, body) = vote_tie(c, base, id, token).await;
        if status == 200 {
            return body;
        }
        assert_eq!(body["error"]["code"], "battle_answering", "{body}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "still answering: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A follow-up or vote refused because a turn is still being answered (the page asks again
/// for a few seconds after Stop) is not counted against the visitor's limits: with 3 turns
/// and 1 vote a minute, ten refusals later the next turn and the vote are still taken.
#[test]
fn refusals_while_answering_spend_no_limit() {
    let one = |n| RateLimits {
        per_visitor: n,
        per_address: 0,
    };
    let config = ArenaConfig {
        turn_limits: one(3),
        vote_limits: one(1),
        ..no_limits()
    };
    let s = serve(Arena::in_memory(config), &["smol-a", "smol-b"]);
    let base = s.base.clone();
    let (id, token, _) = s.battle(json!({"max_tokens": 2}));
    runtime().block_on(async {
        let c = reqwest::Client::new();
        // A long answer, as in the test below: the greedy story runs past 128 tokens.
        let follow = json!({"battle_id": id, "token": token, "stream": true, "max_tokens": 128,
                            "messages": [{"role": "user", "content": "Write a long story about a dragon."}]});
        let (mut r, _) = until_first_piece(&c, &base, follow).await;
        for _ in 0..5 {
            let again = c
                .post(format!("{base}/arena/battles"))
                .json(&json!({"battle_id": id, "token": token, "max_tokens": 2,
                              "messages": [{"role": "user", "content": "Hi"}]}))
                .send()
                .await
                .unwrap();
            let body: Value = again.json().await.unwrap();
            assert_eq!(body["error"]["code"], "battle_answering", "{body}");
            let (status, body) = vote_tie(&c, &base, &id, &token).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (409, Some("battle_answering")),
                "{body}"
            );
        }
        while r.chunk().await.unwrap().is_some() {}
    });
    let mut third = ask();
    third["battle_id"] = id.clone().into();
    third["token"] = token.clone().into();
    third["max_tokens"] = 2.into();
    // The mark goes once the stored turn's stream is done: until then, asked again.
    let t = Instant::now();
    let (status, body) = loop {
        let (status, body) = s.post("/arena/battles", third.clone());
        if body["error"]["code"] != "battle_answering" || t.elapsed() > Duration::from_secs(30) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "the third turn of the minute: {body}");
    assert_eq!(s.vote(&id, Some(&token), "tie").0, 200, "the minute's vote");
}

/// A vote while a follow-up turn is being answered is refused (409 `battle_answering`): it
/// would be stored with the turn before while the visitor reads the new one (it used to be,
/// and the new turn was thrown away). Once the turn is stored the vote counts, follow-up
/// included; a follow-up its visitor leaves mid-stream lets the battle be voted on again.
#[test]
fn no_vote_lands_while_a_follow_up_is_answered() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let base = s.base.clone();
    let follow = |id: &str, token: &str| {
        // A long answer (battles take no `ignore_eos`): the greedy story runs past 128 tokens.
        json!({"battle_id": id, "token": token, "stream": true, "max_tokens": 128,
               "messages": [{"role": "user", "content": "Write a long story about a dragon."}]})
    };
    let (id, token, _) = s.battle(json!({"max_tokens": 2}));
    let (left, left_token, _) = s.battle(json!({"max_tokens": 2}));
    runtime().block_on(async {
        let c = reqwest::Client::new();
        let (mut r, mut seen) = until_first_piece(&c, &base, follow(&id, &token)).await;
        let (status, body) = vote_tie(&c, &base, &id, &token).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("battle_answering")),
            "{body}"
        );
        // One follow-up at a time: a second would end the first's mark when it ends.
        let second = c
            .post(format!("{base}/arena/battles"))
            .json(&json!({"battle_id": id, "token": token, "max_tokens": 2,
                          "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(second.status(), 409);
        let body: Value = second.json().await.unwrap();
        assert_eq!(body["error"]["code"], "battle_answering", "{body}");
        while let Some(chunk) = r.chunk().await.unwrap() {
            seen += &String::from_utf8_lossy(&chunk);
        }
        assert!(seen.contains("{\"done\":true,"), "{seen}");
        let (status, body) = vote_tie(&c, &base, &id, &token).await;
        assert_eq!(status, 200, "the stored turn takes the vote: {body}");

        // Left mid-stream: the turn is not stored and the battle takes a vote again.
        let (r, _) = until_first_piece(&c, &base, follow(&left, &left_token)).await;
        drop(r);
        let body = vote_once_answered(&c, &base, &left, &left_token).await;
        assert_eq!(body["anony"], true, "nothing named: {body}");
    });
    let exported = runtime().block_on(s.state.arena.export()).unwrap();
    let turn = |battle: &str| {
        exported
            .iter()
            .find(|v| v["question_id"] == battle)
            .unwrap()["turn"]
            .clone()
    };
    assert_eq!(turn(&id), 2, "{exported:?}");
    assert_eq!(turn(&left), 1, "{exported:?}");
}

/// A turn its visitor stops after reading part of it is not stored, but what it showed
/// counts for the vote: a question naming a model (or an answer doing so) makes the vote
/// not anonymous. Before, a visitor could read the names in a follow-up, stop it, and cast
/// a rated vote on the turn before. A battle whose first turn was stopped takes no more
/// turns (the page starts a new battle): continued, a visitor could keep only the battles
/// whose first turn failed, which can depend on the models drawn.
#[test]
fn a_stopped_turn_that_named_a_model_leaves_the_vote_unrated() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let base = s.base.clone();
    let (id, token, _) = s.battle(json!({"max_tokens": 2}));
    runtime().block_on(async {
        let c = reqwest::Client::new();
        let follow = json!({"battle_id": id, "token": token, "stream": true, "max_tokens": 128,
            "messages": [{"role": "user", "content": "Are you smol-a? Write a long story about it."}]});
        let (r, _) = until_first_piece(&c, &base, follow).await;
        drop(r);
        let body = vote_once_answered(&c, &base, &id, &token).await;
        assert_eq!(body["anony"], false, "the stopped turn named smol-a: {body}");
        // A first turn stopped: the battle is left, its follow-ups refused.
        let first = json!({"stream": true, "max_tokens": 128,
            "messages": [{"role": "user", "content": "Write a long story about a dragon."}]});
        let (r, seen) = until_first_piece(&c, &base, first).await;
        drop(r);
        let head: Value = serde_json::from_str(
            seen.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap(),
        )
        .unwrap();
        let follow = json!({"battle_id": head["battle_id"], "token": head["token"],
            "max_tokens": 2, "messages": [{"role": "user", "content": "Go on."}]});
        let r = c.post(format!("{base}/arena/battles")).json(&follow).send().await.unwrap();
        let status = r.status().as_u16();
        assert_refused(status, &r.json().await.unwrap(), 409, "battle_unanswered");
    });
    let exported = runtime().block_on(s.state.arena.export()).unwrap();
    assert_eq!(exported[0]["anony"], false, "{}", exported[0]);
    // The stopped turn itself was not stored: the vote is on the first.
    assert_eq!(exported[0]["turn"], 1, "{}", exported[0]);
}

/// What a battle stores of the visitor's messages is their role and text: other keys (a
/// message's `name`, unknown fields, a content part's extras) never reach a template, so
/// nothing bounded them, and each turn kept them twice, in the battle, its vote and the
/// export. A field sent as `null` is as good as left out.
#[test]
fn a_battle_stores_only_the_visitors_text() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let pad = "x".repeat(100_000);
    let (id, token, _) = s.battle(json!({
        "messages": [{"role": "user", "name": "bob", "pad": pad,
                      "content": [{"type": "text", "text": "Name a color.", "pad": pad}]}],
        "top_logprobs": null, "stream_options": null, "seed": null, "n": null}));
    let (status, body) = s.vote(&id, Some(&token), "tie");
    assert_eq!(status, 200, "{body}");
    let exported = runtime().block_on(s.state.arena.export()).unwrap();
    for side in ["conversation_a", "conversation_b"] {
        let c = &exported[0][side];
        assert_eq!(
            c[0],
            json!({"role": "user", "content": "Name a color."}),
            "{c}"
        );
        let bytes = c.to_string().len();
        assert!(bytes < 1_000, "{side}: {bytes} bytes");
    }
}

/// A side's context bounds its answer rather than refusing the turn, and a conversation past
/// it loses its oldest turns on that side (as FastChat's workers cut the prompt): a refusal
/// from one side only, or the tokens left, would tell which model is where.
#[test]
fn a_side_with_less_context_answers_shorter_rather_than_failing() {
    let s = roomy_and_cramped(64);
    let turn = |battle: Option<(&str, &str)>| {
        let mut body = json!({"max_tokens": 48, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me about the weather today."}]});
        if let Some((id, token)) = battle {
            body["battle_id"] = id.into();
            body["token"] = token.into();
        }
        let (status, b) = s.post("/arena/battles", body);
        assert_eq!(status, 200, "{b}");
        b
    };
    let first = turn(None);
    let (id, token) = (
        first["battle_id"].as_str().unwrap().to_string(),
        first["token"].as_str().unwrap().to_string(),
    );
    // Three more turns: the conversation outgrows 64 tokens, the cramped side drops turns.
    for _ in 0..3 {
        turn(Some((&id, &token)));
    }
    let (status, body) = s.vote(&id, Some(&token), "tie");
    assert_eq!(status, 200, "{body}");
    let exported = runtime().block_on(s.state.arena.export()).unwrap();
    assert_eq!(exported[0]["turn"], 4, "{}", exported[0]);
}

/// The "being answered" mark is a lease: a server that dies mid-turn (its mark never
/// renewed nor removed) blocks votes for one lease, not for the battle's life; a live turn
/// renews it, so a vote stays refused past the lease while the answer still streams.
#[test]
fn the_answering_mark_is_a_renewed_lease() {
    // Renewed every third of it: two thirds of slack for a busy machine.
    let lease = Duration::from_millis(1500);
    let s = serve(
        Arena::in_memory(ArenaConfig {
            answer_lease: lease,
            ..no_limits()
        }),
        &["smol-a", "smol-b"],
    );
    // A mark left by a dead server.
    let (id, token, _) = s.battle(json!({"max_tokens": 2}));
    let visitor = Visitor::from_token(&token).unwrap();
    runtime().block_on(async {
        let open = s.state.arena.resume(&id, &visitor).await.unwrap();
        s.state.arena.begin_answer(&open).await.unwrap();
    });
    let (status, body) = s.vote(&id, Some(&token), "tie");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("battle_answering")),
        "{body}"
    );
    std::thread::sleep(lease + Duration::from_millis(300));
    let (status, body) = s.vote(&id, Some(&token), "tie");
    assert_eq!(
        status, 200,
        "the dead server's mark outlived its lease: {body}"
    );
    // A live follow-up, past one and a half leases: still answering, then stored and voted
    // on. Both sides may end their stories (sampled end tokens, or all 450 tokens: ~3 s on
    // an idle Zen 4, where two leases were too long) before the vote is answered: the vote
    // then rightly lands, and the follow-up is tried again in a new battle.
    for attempt in 1..=3 {
        let (id, token, _) = s.battle(json!({"max_tokens": 2}));
        let ended_first = runtime().block_on(async {
            let c = reqwest::Client::new();
            let follow = json!({"battle_id": id, "token": token, "stream": true, "max_tokens": 450,
                                "messages": [{"role": "user", "content": "Write a long story about a dragon."}]});
            let (mut r, mut seen) = until_first_piece(&c, &s.base, follow).await;
            let drain = tokio::spawn(async move {
                while let Some(chunk) = r.chunk().await.unwrap() {
                    seen += &String::from_utf8_lossy(&chunk);
                }
                (seen, std::time::Instant::now())
            });
            tokio::time::sleep(lease + lease / 2).await;
            let (status, body) = vote_tie(&c, &s.base, &id, &token).await;
            let answered = std::time::Instant::now();
            let (seen, ended) = drain.await.unwrap();
            assert!(seen.contains("{\"done\":true,"), "{seen}");
            if status == 200 && ended <= answered {
                return true;
            }
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (409, Some("battle_answering")),
                "a vote while the turn still streamed, past a lease: {body}"
            );
            assert_eq!(vote_tie(&c, &s.base, &id, &token).await.0, 200);
            false
        });
        if !ended_first {
            return;
        }
        eprintln!("attempt {attempt}: both stories ended before the vote was answered; again");
    }
    panic!("three follow-ups ended within 1.5 leases: nothing tested the live mark");
}

/// A follow-up carries only the new messages: each side answers its own conversation (its
/// own earlier answers, never the other side's), as the store keeps them.
#[test]
fn each_side_keeps_its_own_conversation() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let mut first = ask();
    first["temperature"] = 1.5.into();
    first["max_tokens"] = 8.into();
    let (id, token, _) = s.battle(first.as_object().unwrap().clone().into());
    let follow = json!({"battle_id": id, "token": token, "max_tokens": 4, "temperature": 0,
                        "messages": [{"role": "user", "content": "And another?"}]});
    assert_eq!(s.post("/arena/battles", follow).0, 200);
    let open = runtime()
        .block_on(
            s.state
                .arena
                .resume(&id, &Visitor::from_token(&token).unwrap()),
        )
        .unwrap();
    for conv in [&open.conversation_a, &open.conversation_b] {
        let roles: Vec<&str> = conv.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(
            roles,
            ["user", "assistant", "user", "assistant"],
            "{conv:?}"
        );
        assert_eq!(conv[2]["content"], "And another?");
    }
}

/// The cache fingerprint: a visitor sends a unique message to one model through the API, then
/// starts a battle with it. The battle shows no usage or cached-token count, and its prompts
/// run in the battle's own cache partition: no engine serves them from the API request's
/// cached blocks (the old arena answered `usage.prompt_tokens_details.cached_tokens > 0` on
/// the side of that model). A follow-up of the same battle may use the battle's own blocks.
#[test]
fn a_battle_cannot_be_fingerprinted_through_the_prefix_cache() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let unique = format!(
        "{} Tell me about the number {}.",
        "Consider this carefully. ".repeat(12),
        std::process::id()
    );
    let direct = json!({"model": "smol-a", "max_tokens": 1,
                        "messages": [{"role": "user", "content": unique}]});
    let (status, d) = s.post("/v1/chat/completions", direct.clone());
    assert_eq!(status, 200, "{d}");
    // The same request again is served from the cache: the fingerprint would work.
    let (_, again) = s.post("/v1/chat/completions", direct);
    assert!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{again}"
    );
    let cached = |name: &str| -> u64 {
        let models = s.state.models().unwrap();
        let m = models.iter().find(|m| m.name == name).unwrap();
        m.engine
            .metrics
            .cached_prompt_tokens
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = (cached("smol-a"), cached("smol-b"));
    let battle = json!({"max_tokens": 2, "messages": [{"role": "user", "content": unique}]});
    let (status, b) = s.post("/arena/battles", battle);
    assert_eq!(status, 200, "{b}");
    let text = b.to_string();
    for leak in [
        "usage",
        "cached_tokens",
        "prompt_tokens",
        "completion_tokens",
    ] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    assert_eq!(
        (cached("smol-a"), cached("smol-b")),
        before,
        "a battle prompt was served from another request's cached blocks"
    );
    // Battle prompts are cached, in the battle's own partition: a follow-up reads the first
    // turn's blocks on both sides. (So the check above held because of the partition, not
    // because battle prompts miss the cache.)
    let follow = json!({"battle_id": b["battle_id"], "token": b["token"], "max_tokens": 2,
                        "messages": [{"role": "user", "content": "And then?"}]});
    let (status, f) = s.post("/arena/battles", follow);
    assert_eq!(status, 200, "{f}");
    let after = (cached("smol-a"), cached("smol-b"));
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "a follow-up read no cached block: {before:?} then {after:?}"
    );
}

/// A failed turn whose mark the store cannot take at that moment (here a trigger refuses
/// every new mark during the turn) still leaves the vote unrated on every server: the turn's "being
/// answered" mark is left to run out its lease instead of being ended, and a vote after a
/// lease that ran out unended is not rated. (The server that failed keeps the mark to write
/// before its own votes; another server does not know of it.)
#[test]
fn a_failed_turn_the_store_could_not_mark_leaves_the_vote_unrated_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("arena.db");
    let config = ArenaConfig {
        answer_lease: Duration::from_millis(400),
        ..no_limits()
    };
    let two = |config: ArenaConfig| {
        serve_models(
            ServerConfig::default(),
            sqlite_arena(&db, config),
            vec![
                entry_with_context("roomy", 512),
                entry_with_context("cramped", 64),
            ],
        )
    };
    let (a, b) = (two(config.clone()), two(config));
    let sql = |q: &str| {
        let script = format!(
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute({q:?}); c.commit()"
        );
        let ok = std::process::Command::new("python3")
            .args(["-c", &script])
            .arg(&db)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{q}");
    };
    let first = json!({"max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]});
    let (status, battle) = a.post("/arena/battles", first);
    assert_eq!(status, 200, "{battle}");
    let (id, token) = (
        battle["battle_id"].as_str().unwrap(),
        battle["token"].as_str().unwrap(),
    );
    sql("CREATE TRIGGER refuse_marks BEFORE INSERT ON arena_named \
         BEGIN SELECT RAISE(ABORT, 'store away'); END");
    let follow = json!({"battle_id": id, "token": token, "max_tokens": 8,
        "messages": [{"role": "user", "content": LONG_FOR_CRAMPED.repeat(6)}]});
    let (status, err) = a.post("/arena/battles", follow);
    sql("DROP TRIGGER refuse_marks");
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "arena_turn_failed", "{err}");
    let t = Instant::now();
    let (status, vote) = loop {
        let (status, vote) = b.vote(id, Some(token), "model_a");
        if status != 409 || vote["error"]["code"] != "battle_answering" {
            break (status, vote);
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{vote}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((status, &vote["anony"]), (200, &json!(false)), "{vote}");
}

/// Whichever side fails, and however, the visitor reads one neutral error: here one model has
/// a short context and the prompt does not fit it (the old arena answered with that model's
/// context length in the message — and which side it was).
#[test]
fn a_side_that_fails_is_not_named() {
    let s = roomy_and_cramped(48);
    let long = LONG_FOR_CRAMPED.repeat(6);
    let mut bodies = std::collections::BTreeSet::new();
    for stream in [false, true] {
        for _ in 0..3 {
            let battle = json!({"max_tokens": 8, "stream": stream,
                                "messages": [{"role": "user", "content": long}]});
            let (status, body) = call(&s.base, "POST", "/arena/battles", None, Some(battle));
            assert_eq!(status, 400, "{body}");
            for leak in ["roomy", "cramped", "48", "context length", "tokens"] {
                assert!(!body.contains(leak), "{leak} in {body}");
            }
            let err: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(err["error"]["code"], "arena_turn_failed", "{err}");
            bodies.insert(body);
        }
    }
    assert_eq!(bodies.len(), 1, "the errors differ: {bodies:?}");
}

/// A turn that fails on one side tells the sides apart: here a follow-up the cramped model's
/// context cannot hold (the first turn fits both). The visitor still gets the one neutral
/// error and may vote on the turn before, but the vote is not rated: else failing turns
/// would probe the pair before a rated vote.
#[test]
fn a_turn_that_fails_leaves_the_vote_unrated() {
    let s = roomy_and_cramped(64);
    let long = LONG_FOR_CRAMPED.repeat(6);
    for stream in [false, true] {
        let first = json!({"max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]});
        let (status, b) = s.post("/arena/battles", first);
        assert_eq!(status, 200, "{b}");
        let (id, token) = (
            b["battle_id"].as_str().unwrap(),
            b["token"].as_str().unwrap(),
        );
        let follow = json!({"battle_id": id, "token": token, "max_tokens": 8, "stream": stream,
                            "messages": [{"role": "user", "content": long}]});
        let (status, err) = s.post("/arena/battles", follow);
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["code"], "arena_turn_failed", "{err}");
        // The failed turn's "being answered" mark goes in a task of its own: until then
        // the vote is refused as one during a turn.
        let t = Instant::now();
        let (status, vote) = loop {
            let (status, vote) = s.vote(id, Some(token), "model_a");
            if status != 409 || vote["error"]["code"] != "battle_answering" {
                break (status, vote);
            }
            assert!(t.elapsed() < Duration::from_secs(30), "{vote}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status, 200, "{vote}");
        assert_eq!(vote["anony"], false, "stream {stream}: {vote}");
    }
    // A follow-up that fits both keeps the vote rated.
    let first = json!({"max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]});
    let (_, b) = s.post("/arena/battles", first);
    let (id, token) = (
        b["battle_id"].as_str().unwrap(),
        b["token"].as_str().unwrap(),
    );
    let follow = json!({"battle_id": id, "token": token, "max_tokens": 4,
                        "messages": [{"role": "user", "content": "And?"}]});
    let (status, f) = s.post("/arena/battles", follow);
    assert_eq!(status, 200, "{f}");
    let (status, vote) = s.vote(id, Some(token), "model_a");
    assert_eq!(status, 200, "{vote}");
    assert_eq!(vote["anony"], true, "{vote}");
}

/// One address may have only so many turns answered at once (each holds two generation
/// slots): the next is refused with 429 before it spends the per-minute limits, the API
/// keeps its slots, and once a turn ends the address may start another.
#[test]
fn an_address_has_its_turns_in_flight_capped() {
    let s = serve(
        Arena::in_memory(ArenaConfig {
            turns_in_flight_per_address: 1,
            ..no_limits()
        }),
        &["smol-a", "smol-b"],
    );
    let base = s.base.clone();
    let long = json!({"stream": true, "max_tokens": 128, "temperature": 0,
                      "messages": [{"role": "user", "content": "Write a long story about a dragon."}]});
    runtime().block_on(async {
        let c = reqwest::Client::new();
        let (r, _) = until_first_piece(&c, &base, long.clone()).await;
        let second = c
            .post(format!("{base}/arena/battles"))
            .json(&json!({"max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(second.status(), 429);
        let body: Value = second.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        let api = c
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "smol-a", "max_tokens": 2,
                          "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(api.status(), 200);
        // The first turn left: its slot goes with it.
        drop(r);
        let t = std::time::Instant::now();
        loop {
            let again = c
                .post(format!("{base}/arena/battles"))
                .json(&json!({"max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}))
                .send()
                .await
                .unwrap();
            if again.status() == 200 {
                break;
            }
            assert_eq!(again.status(), 429);
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the slot never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Per-model series move with battle traffic; where an anonymous visitor can read `/metrics`
/// and start battles, none is shown. With an API key on `/metrics` they are.
#[test]
fn metrics_readable_by_visitors_show_no_per_model_series() {
    let open = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    open.battle(json!({}));
    let (status, m) = call(&open.base, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(m.contains("camelid_requests_total"), "{m}");
    assert!(
        !m.contains("model=\""),
        "per-model series in anonymous metrics: {m}"
    );

    let keyed = serve_models(
        ServerConfig {
            api_keys: vec!["sk-ops".into()],
            ..Default::default()
        },
        Arena::in_memory(no_limits()),
        vec![entry("smol-a"), entry("smol-b")],
    );
    assert_eq!(call(&keyed.base, "GET", "/metrics", None, None).0, 401);
    let (status, m) = call(&keyed.base, "GET", "/metrics", Some("sk-ops"), None);
    assert_eq!(status, 200);
    assert!(m.contains("model=\"smol-a\""), "{m}");
}

/// With API keys set the arena stays open to visitors (the OpenAI API does not);
/// `--arena-private` puts it behind the keys too.
#[test]
fn the_arena_is_open_to_visitors_unless_private() {
    let key = "sk-arena";
    let keyed = || ServerConfig {
        api_keys: vec![key.into()],
        ..Default::default()
    };
    let public = serve_models(
        keyed(),
        Arena::in_memory(no_limits()),
        vec![entry("smol-a"), entry("smol-b")],
    );
    let (status, b) = call(&public.base, "POST", "/arena/battles", None, Some(ask()));
    assert_eq!(status, 200, "{b}");
    let b: Value = serde_json::from_str(&b).unwrap();
    let vote = json!({"winner": "tie", "token": b["token"]});
    let path = format!("/arena/battles/{}/vote", b["battle_id"].as_str().unwrap());
    assert_eq!(call(&public.base, "POST", &path, None, Some(vote)).0, 200);
    for path in ["/arena/leaderboard", "/arena/config"] {
        assert_eq!(call(&public.base, "GET", path, None, None).0, 200, "{path}");
    }
    assert_eq!(call(&public.base, "GET", "/v1/models", None, None).0, 401);

    let private = serve_models(
        keyed(),
        Arena::in_memory(ArenaConfig {
            private: true,
            ..no_limits()
        }),
        vec![entry("smol-a"), entry("smol-b")],
    );
    for (method, path, body) in [
        ("POST", "/arena/battles", Some(ask())),
        (
            "POST",
            "/arena/battles/x/vote",
            Some(json!({"winner": "tie"})),
        ),
        ("GET", "/arena/leaderboard", None),
        ("GET", "/arena/config", None),
    ] {
        let (status, b) = call(&private.base, method, path, None, body);
        assert_eq!(status, 401, "{method} {path}: {b}");
    }
    assert_eq!(
        call(
            &private.base,
            "POST",
            "/arena/battles",
            Some(key),
            Some(ask())
        )
        .0,
        200
    );
    assert_eq!(
        call(&private.base, "GET", "/", None, None).0,
        200,
        "the pages stay open"
    );
}

/// A reasoning model served as DeepSeek-R1 is: its template's generation prompt opens a
/// `<think>` block, which a short answer never closes.
fn thinking_entry(name: &str) -> ModelEntry {
    let lm = camelid_model::load(None, &camelid_model::LoadOptions::default())
        .unwrap()
        .with_chat_template(common::THINKING_TEMPLATE.into())
        .unwrap();
    let config = camelid_engine::EngineConfig {
        kv_cache_mb: 32,
        ..Default::default()
    };
    common::entry_of(lm, name, 512, config)
}

/// A visitor who leaves a streamed battle while both sides think (nothing sent for many
/// steps) cancels both: the engines stop within a few steps, not at `max_tokens`, and their
/// slots and blocks come back. Before, the turn ran on until a side wrote visible text.
#[test]
fn leaving_a_battle_whose_sides_think_cancels_them() {
    let s = serve_models(
        ServerConfig::default(),
        Arena::in_memory(no_limits()),
        vec![thinking_entry("r1-a"), thinking_entry("r1-b")],
    );
    let each = |pick: fn(&camelid_engine::EngineMetrics) -> &std::sync::atomic::AtomicU64| {
        let models = s.state.models().unwrap();
        models
            .iter()
            .map(|m| pick(&m.engine.metrics).load(std::sync::atomic::Ordering::Relaxed))
            .collect::<Vec<u64>>()
    };
    let metric = |pick| each(pick).iter().sum::<u64>();
    let base = s.base.clone();
    runtime().block_on(async {
        let c = reqwest::Client::new();
        let body = json!({"stream": true, "max_tokens": 400, "temperature": 0,
                          "messages": [{"role": "user", "content": "Write a long story about a dragon."}]});
        let mut r = c
            .post(format!("{base}/arena/battles"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The battle's head, then a few steps of thinking (no piece is sent for them).
        let head = r.chunk().await.unwrap().expect("the battle's head");
        assert!(String::from_utf8_lossy(&head).contains("battle_id"));
        let t = std::time::Instant::now();
        while each(|m| &m.generation_tokens).iter().any(|&n| n < 4) {
            assert!(t.elapsed() < std::time::Duration::from_secs(60), "no generation");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(metric(|m| &m.running), 2, "both sides still think");
        drop(r);
        let left_at = metric(|m| &m.generation_tokens);
        let t = std::time::Instant::now();
        while metric(|m| &m.running) > 0 {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(120),
                "still running after the visitor left"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Both sides ran to 400 tokens each (783 of them after the visitor left) before.
        let after = metric(|m| &m.generation_tokens) - left_at;
        assert!(after < 200, "{after} tokens generated after the visitor left");
        assert_eq!(metric(|m| &m.cancelled), 2);
    });
}

/// A battle shows the answers, not a reasoning model's thinking (which would also name its
/// family), with or without `--reasoning-parser` (off by default): a side still thinking
/// when `max_tokens` cut it answers nothing, whole and streamed, while the other model's
/// text is untouched.
#[test]
fn battles_leave_a_reasoning_models_thinking_out() {
    for parser in [true, false] {
        let s = serve_models(
            ServerConfig {
                reasoning_parser: parser,
                ..Default::default()
            },
            Arena::in_memory(no_limits()),
            vec![thinking_entry("r1"), entry("smol")],
        );
        let mut body = ask();
        body["max_tokens"] = 12.into();
        let (id, token, whole) = s.battle(body.as_object().unwrap().clone().into());
        body["stream"] = true.into();
        let (status, text) = call(&s.base, "POST", "/arena/battles", None, Some(body));
        assert_eq!(status, 200, "{text}");
        let mut streamed = [String::new(), String::new()];
        for p in sse_payloads(&text) {
            let Ok(ev) = serde_json::from_str::<Value>(&p) else {
                continue;
            };
            match (ev["side"].as_str(), ev["delta"].as_str()) {
                (Some("a"), Some(d)) => streamed[0] += d,
                (Some("b"), Some(d)) => streamed[1] += d,
                _ => {}
            }
        }
        let (status, reveal) = s.vote(&id, Some(&token), "tie");
        assert_eq!(status, 200, "{reveal}");
        // The streamed battle drew its own sides: the same two answers, in either order.
        let mut contents = [&whole["a"]["content"], &whole["b"]["content"]]
            .map(|c| c.as_str().unwrap().to_string());
        contents.sort();
        streamed.sort();
        assert_eq!(streamed, contents, "parser {parser}: streamed vs whole");
        for side in ["a", "b"] {
            let model = reveal[format!("model_{side}")].as_str().unwrap();
            let content = whole[side]["content"].as_str().unwrap();
            if model == "r1" {
                assert_eq!(
                    content, "",
                    "parser {parser}: {model}'s thinking shown: {whole}"
                );
            } else {
                assert!(
                    !content.is_empty(),
                    "parser {parser}: {model} said nothing: {whole}"
                );
                assert!(!content.contains("<think>"), "{whole}");
            }
        }
    }
}

/// The battle `id` as exported once voted: its (turn, conversation_a, conversation_b).
fn exported_battle(s: &Server, id: &str) -> (Value, Vec<Value>, Vec<Value>) {
    let exported = runtime().block_on(s.state.arena.export()).unwrap();
    let v = exported
        .iter()
        .find(|v| v["question_id"] == id)
        .unwrap_or_else(|| panic!("{id} not exported: {exported:?}"));
    let conversation = |k: &str| v[k].as_array().unwrap().clone();
    (
        v["turn"].clone(),
        conversation("conversation_a"),
        conversation("conversation_b"),
    )
}

fn regenerate_path(id: &str) -> String {
    format!("/arena/battles/{id}/regenerate")
}

/// Regenerate (FastChat's arena button): the last turn is answered again by both models and
/// the new answers replace the old; the vote is on them. Greedy, a longer cap gives the same
/// start and more: the first answers were 2 tokens, the regenerated ones longer. After a
/// follow-up only the last turn is answered again, and the turn count stays.
#[test]
fn regenerate_answers_the_last_turn_again() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let (id, token, first) = s.battle(json!({"max_tokens": 2}));
    let (status, again) = s.post(
        &regenerate_path(&id),
        json!({"token": token, "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["battle_id"], id.as_str());
    for side in ["a", "b"] {
        let (old, new) = (
            first[side]["content"].as_str().unwrap(),
            again[side]["content"].as_str().unwrap(),
        );
        assert!(
            new.starts_with(old) && new.len() > old.len(),
            "{old:?} → {new:?}"
        );
    }
    let (status, reveal) = s.vote(&id, Some(&token), "model_a");
    assert_eq!(status, 200, "{reveal}");
    let (turn, a, b) = exported_battle(&s, &id);
    assert_eq!(turn, 1);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[1]["content"], again["a"]["content"]);
    assert_eq!(b[1]["content"], again["b"]["content"]);

    // A follow-up, then its regenerate: the first turn stays as it was.
    let (id, token, first) = s.battle(json!({"max_tokens": 2}));
    let mut follow = ask();
    follow["battle_id"] = id.clone().into();
    follow["token"] = token.clone().into();
    follow["messages"] = json!([{"role": "user", "content": "And another?"}]);
    let (status, _) = s.post("/arena/battles", follow);
    assert_eq!(status, 200);
    let (status, again) = s.post(
        &regenerate_path(&id),
        json!({"token": token, "max_tokens": 3}),
    );
    assert_eq!(status, 200, "{again}");
    let (status, _) = s.vote(&id, Some(&token), "tie");
    assert_eq!(status, 200);
    let (turn, a, _) = exported_battle(&s, &id);
    assert_eq!(turn, 2);
    assert_eq!(a.len(), 4, "{a:?}");
    assert_eq!(a[1]["content"], first["a"]["content"]);
    assert_eq!(a[2]["content"], "And another?");
    assert_eq!(a[3]["content"], again["a"]["content"]);
}

/// A regenerate is refused as a follow-up is: another visitor's (403), unknown (404), before
/// any answer (409), after the vote (409), with messages of its own (400); and the arena's
/// refused fields are refused here too.
#[test]
fn regenerate_is_refused_as_a_follow_up_is() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let (id, token, _) = s.battle(json!({}));
    let stranger = format!("{:064x}", 99);
    let (status, err) = s.post(&regenerate_path(&id), json!({"token": stranger}));
    assert_refused(status, &err, 403, "battle_not_yours");
    let (status, err) = s.post(&regenerate_path(&id), json!({}));
    assert_refused(status, &err, 403, "battle_not_yours");
    let made_up = format!("battle-{:032x}", 7);
    let (status, err) = s.post(&regenerate_path(&made_up), json!({"token": token}));
    assert_refused(status, &err, 404, "battle_not_found");
    let (status, err) = s.post(
        &regenerate_path(&id),
        json!({"token": token, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "messages", "{err}");
    let (status, err) = s.post(&regenerate_path(&id), json!({"token": token, "seed": 1}));
    assert_eq!(
        (status, &err["error"]["param"]),
        (400, &json!("seed")),
        "{err}"
    );
    // A battle with no answer yet.
    let visitor = Visitor::new();
    let empty = runtime()
        .block_on(
            s.state
                .arena
                .start(&visitor, "smol-a".into(), "smol-b".into()),
        )
        .unwrap();
    let (status, err) = s.post(
        &regenerate_path(&empty.id),
        json!({"token": visitor.token()}),
    );
    assert_refused(status, &err, 409, "battle_unanswered");
    let (status, _) = s.vote(&id, Some(&token), "tie");
    assert_eq!(status, 200);
    let (status, err) = s.post(&regenerate_path(&id), json!({"token": token}));
    assert_refused(status, &err, 409, "battle_voted");
}

/// The answers a regenerate replaces were shown: if they named a model the vote is not
/// anonymous, though the answers it is cast on name none (without the mark, regenerating
/// until the names are gone would make a rated vote of a battle whose models were seen).
/// The same battle whose first answers named nobody keeps an anonymous vote.
#[test]
fn answers_replaced_after_naming_a_model_leave_the_vote_unrated() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    for (first_answer, anony) in [("I am smol-a.", false), ("Blue.", true)] {
        let visitor = Visitor::new();
        let battle = runtime().block_on(async {
            let battle = s
                .state
                .arena
                .start(&visitor, "smol-a".into(), "smol-b".into())
                .await
                .unwrap();
            let turn = |a: &str| {
                vec![
                    json!({"role": "user", "content": "Name a color."}),
                    json!({"role": "assistant", "content": a}),
                ]
            };
            s.state
                .arena
                .record_turn(&battle, &visitor, &turn(first_answer), &turn("Red."), false)
                .await
                .unwrap();
            battle
        });
        let (status, again) = s.post(
            &regenerate_path(&battle.id),
            json!({"token": visitor.token(), "max_tokens": 4, "temperature": 0}),
        );
        assert_eq!(status, 200, "{again}");
        let (status, reveal) = s.vote(&battle.id, Some(visitor.token()), "model_a");
        assert_eq!(status, 200, "{reveal}");
        let (_, a, _) = exported_battle(&s, &battle.id);
        assert_eq!(
            a[1]["content"], again["a"]["content"],
            "the vote is on the new answers"
        );
        assert_eq!(reveal["anony"], anony, "{first_answer:?} → {again}");
    }
}

/// While a regenerate is answered nothing lands on the battle: a vote, a follow-up or a second
/// regenerate is 409 `battle_answering`; once stored, the vote is taken on the new answers.
/// One its visitor leaves keeps the answers it would have replaced.
#[test]
fn nothing_lands_while_a_regenerate_is_answered() {
    let s = serve(Arena::in_memory(no_limits()), &["smol-a", "smol-b"]);
    let base = s.base.clone();
    let story = json!({"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
                       "max_tokens": 2, "temperature": 0});
    let (id, token, _) = s.battle(story.clone());
    let (left, left_token, left_first) = s.battle(story);
    let long = |token: &str| json!({"token": token, "stream": true, "max_tokens": 128});
    runtime().block_on(async {
        let c = reqwest::Client::new();
        let url = format!("{base}{}", regenerate_path(&id));
        let (mut r, mut seen) = until_first_piece_at(&c, &url, long(&token)).await;
        let (status, body) = vote_tie(&c, &base, &id, &token).await;
        assert_refused(status, &body, 409, "battle_answering");
        let again = c
            .post(&url)
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
        let status = again.status().as_u16();
        assert_refused(
            status,
            &again.json().await.unwrap(),
            409,
            "battle_answering",
        );
        let follow = json!({"battle_id": id, "token": token,
                            "messages": [{"role": "user", "content": "Hi"}]});
        let next = c
            .post(format!("{base}/arena/battles"))
            .json(&follow)
            .send()
            .await
            .unwrap();
        let status = next.status().as_u16();
        assert_refused(status, &next.json().await.unwrap(), 409, "battle_answering");
        while let Some(chunk) = r.chunk().await.unwrap() {
            seen += &String::from_utf8_lossy(&chunk);
        }
        assert!(seen.contains("{\"done\":true,"), "{seen}");
        let (status, body) = vote_tie(&c, &base, &id, &token).await;
        assert_eq!(status, 200, "{body}");

        // Left mid-stream: not stored, and the battle's vote is on its first answers.
        let url = format!("{base}{}", regenerate_path(&left));
        let (r, _) = until_first_piece_at(&c, &url, long(&left_token)).await;
        drop(r);
        vote_once_answered(&c, &base, &left, &left_token).await;
    });
    let (_, a, _) = exported_battle(&s, &id);
    assert!(a[1]["content"].as_str().unwrap().len() > 20, "{a:?}");
    let (_, a, _) = exported_battle(&s, &left);
    assert_eq!(a[1]["content"], left_first["a"]["content"], "{a:?}");
}

/// Both writes of a turn are compare-and-set on the conversations they read: a follow-up
/// read before a regenerate replaced the last answers (the turn count the same) is not
/// stored over them (it would drop the answers the visitor saw last), nor a regenerate over
/// a turn added since.
#[test]
fn a_turn_read_before_a_regenerate_is_not_stored_over_it() {
    let arena = Arena::in_memory(no_limits());
    runtime().block_on(async {
        let visitor = Visitor::new();
        let battle = arena
            .start(&visitor, "smol-a".into(), "smol-b".into())
            .await
            .unwrap();
        let turn = hi_answered;
        arena
            .record_turn(&battle, &visitor, &turn("a"), &turn("b"), false)
            .await
            .unwrap();
        // A follow-up and a regenerate both read turn 1.
        let follow = arena.resume(&battle.id, &visitor).await.unwrap();
        let again = arena.resume(&battle.id, &visitor).await.unwrap();
        arena
            .record_turn(&again, &visitor, &turn("a2"), &turn("b2"), true)
            .await
            .expect("the regenerate replaces turn 1");
        let mut longer = turn("a");
        longer.extend(turn("next"));
        let err = arena
            .record_turn(&follow, &visitor, &longer, &longer, false)
            .await
            .unwrap_err();
        assert_eq!(err.status.as_u16(), 409, "{}", err.message);
        // And a regenerate read before a follow-up was stored is not stored over it.
        let stale = arena.resume(&battle.id, &visitor).await.unwrap();
        let follow = arena.resume(&battle.id, &visitor).await.unwrap();
        let mut two = turn("a2");
        two.extend(turn("c"));
        arena
            .record_turn(&follow, &visitor, &two, &two, false)
            .await
            .unwrap();
        let err = arena
            .record_turn(&stale, &visitor, &turn("a3"), &turn("b3"), true)
            .await
            .unwrap_err();
        assert_eq!(err.status.as_u16(), 409, "{}", err.message);
        let now = arena.resume(&battle.id, &visitor).await.unwrap();
        assert_eq!(now.turns, 2);
        assert_eq!(now.conversation_a, two);
    });
}
