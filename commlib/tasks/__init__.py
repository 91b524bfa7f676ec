"""Tasks: data only (items with the sender's and receiver's prompts and the answer)."""

from commlib.tasks.games import GameItem, countries, load_game, load_jsonl, tipsheets

__all__ = ["GameItem", "countries", "load_game", "load_jsonl", "tipsheets"]
