"""A database made by an older release (a table without a column added since) is brought up to the models."""
import sqlite3

from gateway.store import Store


async def test_missing_column_is_added_and_rows_kept(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE agents (id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(200) NOT NULL, "
                "engine VARCHAR(500), settings JSON, created_at DATETIME)")  # no webhook_url: an older schema
    con.execute("INSERT INTO agents (name, settings) VALUES ('old', '{}')")
    con.commit()
    con.close()

    store = Store(str(path))
    await store.open()
    try:
        agents = await store.list_agents()
        assert [a["name"] for a in agents] == ["old"]
        assert agents[0]["webhook_url"] is None
        await store.update_agent(agents[0]["id"], {"webhook_url": "https://example.com/hook"})
        assert (await store.get_agent(agents[0]["id"]))["webhook_url"] == "https://example.com/hook"
    finally:
        await store.close()
