//! The default model's tokenizer: against token ids from an independent implementation
//! (llama.cpp's `llama-tokenize` on the same GGUF, committed by
//! tests/fixtures/smollm2/make_ids.py), and as camelid writes it to tokenizer.json.

mod common;

/// The committed llama.cpp cases: texts and their reference ids.
fn cases() -> Vec<(String, Vec<u32>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/smollm2/llama_cpp_ids.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("fixture JSON");
    doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let text = c["text"].as_str().unwrap().to_string();
            (text, serde_json::from_value(c["ids"].clone()).unwrap())
        })
        .collect()
}

#[test]
fn gguf_tokenizer_round_trips_and_matches_converted_tokenizer_json() {
    let gguf = common::load(&common::default_gguf());
    let dir = common::converted_f32();
    let from_file =
        camelid_model::text::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let texts = cases().into_iter().map(|(t, _)| t);
    for s in texts.chain([String::new()]) {
        let a = gguf.tokenizer.encode(&s, false).unwrap();
        let b = from_file.encode(&s, false).unwrap();
        assert_eq!(a, b, "{s:?}");
        assert_eq!(
            gguf.tokenizer.decode(&a, false).unwrap(),
            s,
            "round trip {s:?}"
        );
    }
    // Special tokens written literally become one id.
    let im_end = gguf.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert_eq!(
        gguf.tokenizer.encode("<|im_end|>", false).unwrap(),
        vec![im_end]
    );
    assert!(
        gguf.stop_token_ids.contains(&im_end),
        "ChatML end of turn stops generation"
    );
    // Digits split one by one (SmolLM's pre-tokenizer).
    assert_eq!(gguf.tokenizer.encode("123", false).unwrap().len(), 3);
}

/// Every committed case: camelid's tokenizer built from the GGUF metadata gives llama.cpp's ids
/// (and decodes them back to the text).
#[test]
fn gguf_tokenizer_gives_llama_cpp_ids() {
    let cases = cases();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let lm = common::load(&common::default_gguf());
    for (text, want) in cases {
        assert!(!want.is_empty(), "{text:?}: no reference ids");
        let got = lm.tokenizer.encode(&text, false).unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(lm.tokenizer.decode(&got, false).unwrap(), text);
    }
}
