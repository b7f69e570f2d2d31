"""Renders conversations with FastChat's own templates (fschat in the test venv):
`Conversation.get_prompt()` after the messages and an empty assistant turn, as FastChat's
serving code does. Reads [{"template", "system", "messages"}] as JSON on stdin, writes
[{"prompt", "stop_str"}].

fschat 0.2.36 has no `gemma` template: it is registered here as FastChat main defines it
(lm-sys/FastChat@0e6d3e4, fastchat/conversation.py: `SeparatorStyle.GEMMA` and the `gemma`
template), on fschat's own `Conversation`.
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


class GemmaConversation(Conversation):
    def get_prompt(self):
        ret = "<bos>"
        for role, message in self.messages:
            if message:
                ret += "<start_of_turn>" + role + "\n" + message + self.sep
            else:
                ret += "<start_of_turn>" + role + "\n"
        return ret


if "gemma" not in conv_templates:
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
    if case["system"] is not None:
        conv.set_system_message(case["system"])
    for m in case["messages"]:
        conv.append_message(conv.roles[0 if m["role"] == "user" else 1], m["content"])
    conv.append_message(conv.roles[1], None)
    out.append({"prompt": conv.get_prompt(), "stop_str": conv.stop_str})
json.dump(out, sys.stdout)
