"""Chat with a model: a session that renders the conversation with the chat template and shows each reply
forming (``biglm.chat.session``), the terminal chat (``biglm chat``) and the OpenAI-compatible server with a
live page (``biglm serve``, ``biglm.chat.server``)."""

from biglm.chat.session import ChatModel, ChatSettings, Reply, ReplyUpdate

__all__ = ["ChatModel", "ChatSettings", "Reply", "ReplyUpdate"]
