"""Renders conversations with FastChat's own templates (fschat in the test venv):
`Conversation.get_prompt()` after the messages and an empty assistant turn, as FastChat's
serving code does. Reads [{"template", "system", "messages"}] as JSON on stdin, writes
[{"prompt", "stop_str"}].

fschat 0.2.36 has no `llama-3` and no `gemma` template: they are registered here as FastChat
main defines them (lm-sys/FastChat@0e6d3e4, fastchat/conversation.py: the `LLAMA3` and
`GEMMA` branches of `get_prompt()`, the `llama-3` and `gemma` templates), on fschat's own
`Conversation`.
"""
import json
import sys

from fastchat.conversation import (
    Conversation,
    SeparatorStyle,
    conv_templates,
    get_conv_template,
    register_conv_template,
)


class Llama3Conversation(Conversation):
    def get_prompt(self):
        system_prompt = self.system_template.format(system_message=self.system_message)
        ret = "<|begin_of_text|>"
        if self.system_message:
            ret += system_prompt
        for role, message in self.messages:
            ret += f"<|start_header_id|>{role}<|end_header_id|>\n\n"
            if message:
                ret += f"{message.strip()}<|eot_id|>"
        return ret


class GemmaConversation(Conversation):
    def get_prompt(self):
        ret = "<bos>"
        for role, message in self.messages:
            if message:
                ret += "<start_of_turn>" + role + "\n" + message + self.sep
            else:
                ret += "<start_of_turn>" + role + "\n"
        return ret


# Templates registered here: their get_prompt() (fschat's copy() makes a plain Conversation).
ADDED = {}
if "llama-3" not in conv_templates:
    ADDED["llama-3"] = Llama3Conversation
    register_conv_template(
        Llama3Conversation(
            name="llama-3",
            system_template="<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
            roles=("user", "assistant"),
            sep_style=SeparatorStyle.ADD_COLON_SINGLE,
            sep="",
            stop_str="<|eot_id|>",
        )
    )
if "gemma" not in conv_templates:
    ADDED["gemma"] = GemmaConversation
    register_conv_template(
        GemmaConversation(
            name="gemma",
            roles=("user", "model"),
            sep_style=SeparatorStyle.ADD_COLON_SINGLE,
            sep="<end_of_turn>\n",
            stop_str="<end_of_turn>",
        )
    )

out = []
for case in json.load(sys.stdin):
    conv = get_conv_template(case["template"])
    if case["template"] in ADDED:
        conv.__class__ = ADDED[case["template"]]
    if case["system"] is not None:
        conv.set_system_message(case["system"])
    for m in case["messages"]:
        conv.append_message(conv.roles[0 if m["role"] == "user" else 1], m["content"])
    conv.append_message(conv.roles[1], None)
    out.append({"prompt": conv.get_prompt(), "stop_str": conv.stop_str})
json.dump(out, sys.stdout)
