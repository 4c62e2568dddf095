"""Chat with a model: a session that renders the conversation with the chat template and shows each reply
forming (``biglm.chat.session``) and the terminal chat (``biglm chat``). The server is ``biglm.serve``."""

from biglm.chat.session import ChatModel, ChatSettings, Reply, ReplyUpdate

__all__ = ["ChatModel", "ChatSettings", "Reply", "ReplyUpdate"]
