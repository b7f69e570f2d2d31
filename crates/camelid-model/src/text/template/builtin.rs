//! FastChat's built-in conversation templates (`conversation.py`), byte for byte: the
//! separator styles the built-ins use, each template's roles, separators and default system
//! prompt, and their rendering.

use super::Message;
use crate::error::{Error, Result};

/// FastChat's separator styles that the built-ins use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SepStyle {
    AddColonSingle,
    AddColonTwo,
    Llama2,
    Llama3,
    ChatMl,
    /// FastChat's `GEMMA` (after 0.2.36: FastChat main, `conversation.py`): `<bos>`, then
    /// `<start_of_turn>{role}\n{message}{sep}` per turn; no system prompt.
    Gemma,
}

/// A FastChat `Conversation` template.
#[derive(Debug, Clone)]
pub struct Builtin {
    pub name: &'static str,
    system_template: &'static str,
    pub default_system: &'static str,
    roles: (&'static str, &'static str),
    /// Messages every conversation starts with (one_shot's example).
    preset: &'static [(usize, &'static str)],
    style: SepStyle,
    sep: &'static str,
    sep2: &'static str,
    /// Text that ends the assistant's turn besides EOS.
    pub stop_str: Option<&'static str>,
}

const ONE_SHOT_ANSWER: &str = "Of course! Here are some creative ideas for a 10-year-old's birthday party:
1. Treasure Hunt: Organize a treasure hunt in your backyard or nearby park. Create clues and riddles for the kids to solve, leading them to hidden treasures and surprises.
2. Science Party: Plan a science-themed party where kids can engage in fun and interactive experiments. You can set up different stations with activities like making slime, erupting volcanoes, or creating simple chemical reactions.
3. Outdoor Movie Night: Set up a backyard movie night with a projector and a large screen or white sheet. Create a cozy seating area with blankets and pillows, and serve popcorn and snacks while the kids enjoy a favorite movie under the stars.
4. DIY Crafts Party: Arrange a craft party where kids can unleash their creativity. Provide a variety of craft supplies like beads, paints, and fabrics, and let them create their own unique masterpieces to take home as party favors.
5. Sports Olympics: Host a mini Olympics event with various sports and games. Set up different stations for activities like sack races, relay races, basketball shooting, and obstacle courses. Give out medals or certificates to the participants.
6. Cooking Party: Have a cooking-themed party where the kids can prepare their own mini pizzas, cupcakes, or cookies. Provide toppings, frosting, and decorating supplies, and let them get hands-on in the kitchen.
7. Superhero Training Camp: Create a superhero-themed party where the kids can engage in fun training activities. Set up an obstacle course, have them design their own superhero capes or masks, and organize superhero-themed games and challenges.
8. Outdoor Adventure: Plan an outdoor adventure party at a local park or nature reserve. Arrange activities like hiking, nature scavenger hunts, or a picnic with games. Encourage exploration and appreciation for the outdoors.
Remember to tailor the activities to the birthday child's interests and preferences. Have a great celebration!";

const HUMAN_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";

pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "vicuna_v1.1",
        system_template: "{system_message}",
        default_system: "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
        roles: ("USER", "ASSISTANT"),
        preset: &[],
        style: SepStyle::AddColonTwo,
        sep: " ",
        sep2: "</s>",
        stop_str: None,
    },
    Builtin {
        name: "llama-2",
        system_template: "[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n",
        default_system: "",
        roles: ("[INST]", "[/INST]"),
        preset: &[],
        style: SepStyle::Llama2,
        sep: " ",
        sep2: " </s><s>",
        stop_str: None,
    },
    Builtin {
        name: "llama-3",
        system_template: "<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
        default_system: "",
        roles: ("user", "assistant"),
        preset: &[],
        style: SepStyle::Llama3,
        sep: "",
        sep2: "",
        stop_str: Some("<|eot_id|>"),
    },
    Builtin {
        name: "alpaca",
        system_template: "{system_message}",
        default_system: "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        roles: ("### Instruction", "### Response"),
        preset: &[],
        style: SepStyle::AddColonTwo,
        sep: "\n\n",
        sep2: "</s>",
        stop_str: None,
    },
    Builtin {
        name: "zero_shot",
        system_template: "{system_message}",
        default_system: HUMAN_SYSTEM,
        roles: ("Human", "Assistant"),
        preset: &[],
        style: SepStyle::AddColonSingle,
        sep: "\n### ",
        sep2: "",
        stop_str: Some("###"),
    },
    Builtin {
        name: "one_shot",
        system_template: "{system_message}",
        default_system: HUMAN_SYSTEM,
        roles: ("Human", "Assistant"),
        preset: &[(0, "Got any creative ideas for a 10 year old’s birthday?"), (1, ONE_SHOT_ANSWER)],
        style: SepStyle::AddColonSingle,
        sep: "\n### ",
        sep2: "",
        stop_str: Some("###"),
    },
    Builtin {
        name: "chatml",
        system_template: "<|im_start|>system\n{system_message}",
        default_system: "You are a helpful assistant.",
        roles: ("<|im_start|>user", "<|im_start|>assistant"),
        preset: &[],
        style: SepStyle::ChatMl,
        sep: "<|im_end|>",
        sep2: "",
        stop_str: Some("<|im_end|>"),
    },
    Builtin {
        name: "qwen-7b-chat",
        system_template: "<|im_start|>system\n{system_message}",
        default_system: "You are a helpful assistant.",
        roles: ("<|im_start|>user", "<|im_start|>assistant"),
        preset: &[],
        style: SepStyle::ChatMl,
        sep: "<|im_end|>",
        sep2: "",
        stop_str: Some("<|endoftext|>"),
    },
    Builtin {
        name: "mistral",
        system_template: "[INST] {system_message}\n",
        default_system: "",
        roles: ("[INST]", "[/INST]"),
        preset: &[],
        style: SepStyle::Llama2,
        sep: " ",
        sep2: "</s>",
        stop_str: None,
    },
    Builtin {
        name: "gemma",
        system_template: "{system_message}",
        default_system: "",
        roles: ("user", "model"),
        preset: &[],
        style: SepStyle::Gemma,
        sep: "<end_of_turn>\n",
        sep2: "",
        stop_str: Some("<end_of_turn>"),
    },
];

impl Builtin {
    pub fn by_name(name: &str) -> Option<&'static Builtin> {
        BUILTINS.iter().find(|b| b.name == name)
    }

    /// Renders like FastChat's `Conversation.get_prompt()` after appending the messages
    /// and an empty assistant turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut system = self.default_system.to_string();
        let mut turns: Vec<(usize, Option<String>)> = self
            .preset
            .iter()
            .map(|(r, m)| (*r, Some(m.to_string())))
            .collect();
        // An empty message is an open turn, as FastChat's `if message:` writes it.
        let said = |m: &Message| Some(m.content.clone()).filter(|c| !c.is_empty());
        for m in messages {
            match m.role.as_str() {
                "system" => system = m.content.clone(),
                "user" => turns.push((0, said(m))),
                "assistant" => turns.push((1, said(m))),
                other => return Err(Error::Template(format!("unknown role {other:?}"))),
            }
        }
        if add_generation_prompt {
            turns.push((1, None));
        }
        let role = |r: usize| if r == 0 { self.roles.0 } else { self.roles.1 };
        let system_prompt = self.system_template.replace("{system_message}", &system);
        let mut ret = String::new();
        match self.style {
            SepStyle::AddColonSingle => {
                ret += &system_prompt;
                ret += self.sep;
                for (r, m) in &turns {
                    match m {
                        Some(m) => ret += &format!("{}: {}{}", role(*r), m, self.sep),
                        None => ret += &format!("{}:", role(*r)),
                    }
                }
            }
            SepStyle::AddColonTwo => {
                let seps = [self.sep, self.sep2];
                ret += &system_prompt;
                ret += seps[0];
                for (i, (r, m)) in turns.iter().enumerate() {
                    match m {
                        Some(m) => ret += &format!("{}: {}{}", role(*r), m, seps[i % 2]),
                        None => ret += &format!("{}:", role(*r)),
                    }
                }
            }
            SepStyle::Llama2 => {
                let seps = [self.sep, self.sep2];
                ret += if system.is_empty() {
                    "[INST] "
                } else {
                    &system_prompt
                };
                for (i, (_, m)) in turns.iter().enumerate() {
                    let tag = if i % 2 == 0 {
                        self.roles.0
                    } else {
                        self.roles.1
                    };
                    match m {
                        Some(m) if i == 0 => ret += &format!("{m} "),
                        Some(m) => ret += &format!("{tag} {m}{}", seps[i % 2]),
                        None => ret += tag,
                    }
                }
            }
            SepStyle::Llama3 => {
                ret += "<|begin_of_text|>";
                if !system.is_empty() {
                    ret += &system_prompt;
                }
                for (r, m) in &turns {
                    ret += &format!("<|start_header_id|>{}<|end_header_id|>\n\n", role(*r));
                    if let Some(m) = m {
                        ret += &format!("{}<|eot_id|>", m.trim());
                    }
                }
            }
            SepStyle::Gemma => {
                ret += "<bos>";
                for (r, m) in &turns {
                    ret += &format!("<start_of_turn>{}\n", role(*r));
                    if let Some(m) = m {
                        ret += &format!("{m}{}", self.sep);
                    }
                }
            }
            SepStyle::ChatMl => {
                if !system_prompt.is_empty() {
                    ret += &format!("{system_prompt}{}\n", self.sep);
                }
                for (r, m) in &turns {
                    match m {
                        Some(m) => ret += &format!("{}\n{}{}\n", role(*r), m, self.sep),
                        None => ret += &format!("{}\n", role(*r)),
                    }
                }
            }
        }
        Ok(ret)
    }
}
