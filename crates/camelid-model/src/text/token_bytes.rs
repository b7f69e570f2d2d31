//! The bytes a token stands for, from its vocabulary piece: what llguidance's token trie
//! needs (`constraint::VocabEnv`) and what OpenAI's logprob `bytes` carry (a token that is
//! part of a multi-byte character is that part, not U+FFFD as its decoded text is). Two
//! spellings are known: GPT-2's byte-level BPE (the byte-to-character table) and
//! SentencePiece with byte fallback (`<0xNN>` pieces, `▁` for a space).

use crate::text::tokenizer::Tokenizer;
use std::collections::HashMap;
use tokenizers::DecoderWrapper;

/// How a vocabulary's pieces spell bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceSpelling {
    /// GPT-2: every byte is one printable character.
    ByteLevel,
    /// SentencePiece: UTF-8 text with `space` for ' ', and `<0xNN>` pieces for raw bytes.
    ByteFallback { space: char },
}

fn spelling(d: &DecoderWrapper, found: &mut Option<PieceSpelling>, space: &mut char) {
    match d {
        DecoderWrapper::ByteLevel(_) => *found = Some(PieceSpelling::ByteLevel),
        DecoderWrapper::ByteFallback(_) => {
            *found = Some(PieceSpelling::ByteFallback { space: '▁' })
        }
        DecoderWrapper::Metaspace(_) => *space = '▁',
        DecoderWrapper::Replace(r) if r.content == " " => {
            // The pattern is private; its JSON form names it.
            if let Ok(v) = serde_json::to_value(r) {
                if let Some(s) = v["pattern"]["String"].as_str() {
                    let mut c = s.chars();
                    if let (Some(ch), None) = (c.next(), c.next()) {
                        *space = ch;
                    }
                }
            }
        }
        DecoderWrapper::Sequence(seq) => {
            for d in seq.get_decoders() {
                spelling(d, found, space);
            }
        }
        _ => {}
    }
}

/// GPT-2's byte ↔ character table: printable Latin-1 maps to itself, the rest to U+0100….
fn byte_level_chars() -> std::collections::HashMap<char, u8> {
    let self_mapped =
        |c: char| matches!(c, '!'..='~' | '\u{00A1}'..='\u{00AC}' | '\u{00AE}'..='\u{00FF}');
    let mut map = std::collections::HashMap::new();
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        let c = b as char;
        if self_mapped(c) {
            map.insert(c, b);
        } else {
            map.insert(char::from_u32(next).expect("in range"), b);
            next += 1;
        }
    }
    map
}

/// `<0xNN>` → the byte NN.
fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// A vocabulary's spelling, read once from its decoder.
pub struct TokenBytes {
    kind: PieceSpelling,
    chars: HashMap<char, u8>,
}

impl TokenBytes {
    /// `None` for a vocabulary of neither known spelling.
    pub fn new(tok: &Tokenizer) -> Option<Self> {
        let mut kind = None;
        let mut space = ' ';
        if let Some(d) = tok.inner.get_decoder() {
            spelling(d, &mut kind, &mut space);
        }
        let kind = match kind? {
            PieceSpelling::ByteFallback { .. } => PieceSpelling::ByteFallback { space },
            k => k,
        };
        Some(Self {
            kind,
            chars: byte_level_chars(),
        })
    }

    /// The bytes of vocabulary piece `id` (added tokens aside: their text is their content);
    /// `None` for an id past the vocabulary or a piece its spelling cannot read.
    pub fn piece(&self, inner: &tokenizers::Tokenizer, id: u32) -> Option<Vec<u8>> {
        let piece = inner.id_to_token(id)?;
        match self.kind {
            PieceSpelling::ByteLevel => {
                piece.chars().map(|c| self.chars.get(&c).copied()).collect()
            }
            PieceSpelling::ByteFallback { space } => Some(match byte_piece(&piece) {
                Some(b) => vec![b],
                None => piece.replace(space, " ").into_bytes(),
            }),
        }
    }

    /// What token `id` stands for as bytes: an added token's content, else its piece's bytes.
    pub fn token(&self, tok: &Tokenizer, id: u32) -> Option<Vec<u8>> {
        // Borrowed from the added vocabulary: `Tokenizer::get_added_tokens_decoder` clones
        // the whole map, per logprob entry here.
        match tok
            .inner
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .get(&id)
        {
            Some(a) => Some(a.content.as_bytes().to_vec()),
            None => self.piece(&tok.inner, id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_pieces_parse() {
        assert_eq!(byte_piece("<0x0A>"), Some(10));
        assert_eq!(byte_piece("<0xff>"), Some(255));
        assert_eq!(byte_piece("<0x1>"), None);
        assert_eq!(byte_piece("<s>"), None);
    }

    #[test]
    fn byte_level_table_is_a_bijection() {
        let m = byte_level_chars();
        assert_eq!(m.len(), 256);
        let mut bytes: Vec<u8> = m.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
        assert_eq!(m[&'a'], b'a');
    }
}
