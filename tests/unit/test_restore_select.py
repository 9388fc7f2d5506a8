"""restore.select and restore.toc: names, --before, report ids and the entries a selection takes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from db_backup.restore.select import (
    Candidate,
    Relation,
    check_request,
    check_target_database,
    describe_pick,
    only_report,
    parse_before,
    parse_schema,
    parse_table,
    pick_before,
)
from db_backup.restore.source import RestoreError
from db_backup.restore.toc import linked_entries, parse_toc, script_links, select_entries

# Lines of a real `pg_restore --list` (PostgreSQL 15) of a database with schemas `app` and
# `My S` (names with spaces), an identity column, a serial column, a plain index and FKs.
TOC = """\
;
; Archive created at 2026-12-05 23:12:21 UTC
;
7; 2615 16460 SCHEMA - My S postgres
6; 2615 16444 SCHEMA - app postgres
3412; 0 0 COMMENT - SCHEMA app postgres
227; 1259 16462 TABLE My S T x postgres
226; 1259 16461 SEQUENCE My S T x_a_seq postgres
3413; 0 0 SEQUENCE OWNED BY My S T x_a_seq postgres
225; 1259 16446 TABLE app t postgres
3414; 0 0 COMMENT app TABLE t postgres
3415; 0 0 ACL app TABLE t postgres
224; 1259 16445 SEQUENCE app t_id_seq postgres
217; 1259 16386 TABLE public customers postgres
216; 1259 16385 SEQUENCE public customers_id_seq postgres
3416; 0 0 SEQUENCE OWNED BY public customers_id_seq postgres
221; 1259 16409 TABLE public orders postgres
3231; 2604 16465 DEFAULT My S T x a postgres
3227; 2604 16389 DEFAULT public customers id postgres
3405; 0 16462 TABLE DATA My S T x postgres
3403; 0 16446 TABLE DATA app t postgres
3396; 0 16386 TABLE DATA public customers postgres
3400; 0 16409 TABLE DATA public orders postgres
3419; 0 0 SEQUENCE SET My S T x_a_seq postgres
3420; 0 0 SEQUENCE SET app t_id_seq postgres
3421; 0 0 SEQUENCE SET public customers_id_seq postgres
3246; 2606 16452 CONSTRAINT app t t_pkey postgres
3235; 2606 16394 CONSTRAINT public customers customers_pkey postgres
3247; 1259 16458 INDEX app t_x postgres
3240; 1259 16459 INDEX public odd idx postgres
3251; 2606 16453 FK CONSTRAINT app t t_y_fkey postgres
3248; 2606 16417 FK CONSTRAINT public orders orders_customer_id_fkey postgres
"""

# What `pg_restore --schema-only -f -` prints for the linked entries (abridged, real format).
SCRIPT = """\
--
-- Name: T x_a_seq; Type: SEQUENCE OWNED BY; Schema: My S; Owner: postgres
--

ALTER SEQUENCE "My S"."T x_a_seq" OWNED BY "My S"."T x".a;

--
-- Name: t_id_seq; Type: SEQUENCE; Schema: app; Owner: postgres
--

ALTER TABLE app.t ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME app.t_id_seq
);

--
-- Name: customers_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: postgres
--

ALTER SEQUENCE public.customers_id_seq OWNED BY public.customers.id;

--
-- Name: t_x; Type: INDEX; Schema: app; Owner: postgres
--

CREATE INDEX t_x ON app.t USING btree (x);

--
-- Name: odd idx; Type: INDEX; Schema: public; Owner: postgres
--

CREATE INDEX "odd idx" ON public.orders USING btree (status);

--
-- Name: t t_y_fkey; Type: FK CONSTRAINT; Schema: app; Owner: postgres
--

ALTER TABLE ONLY app.t
    ADD CONSTRAINT t_y_fkey FOREIGN KEY (y) REFERENCES public.customers(id);

--
-- Name: orders orders_customer_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.orders
    ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id);
"""


def ids(selection_entries: list) -> set[int]:
    return {e.dump_id for e in selection_entries}


def test_parse_toc_reads_descriptions_with_spaces_and_names_with_spaces() -> None:
    entries = {e.dump_id: e for e in parse_toc(TOC)}
    assert len(entries) == 29
    owned = entries[3413]
    assert owned.desc == "SEQUENCE OWNED BY" and owned.tag_in("My S") == "T x_a_seq"
    assert entries[3405].desc == "TABLE DATA" and entries[3405].tag_in("My S") == "T x"
    assert entries[3251].desc == "FK CONSTRAINT" and entries[3251].owner == "postgres"
    assert entries[7].tag_in("-") == "My S"


def test_script_links_name_the_table_of_indexes_sequences_and_foreign_keys() -> None:
    links = script_links(SCRIPT)
    assert links[("SEQUENCE OWNED BY", "My S", "T x_a_seq")] == Relation("My S", "T x")
    assert links[("SEQUENCE", "app", "t_id_seq")] == Relation("app", "t")
    assert links[("INDEX", "public", "odd idx")] == Relation("public", "orders")
    assert links[("FK CONSTRAINT", "app", "t t_y_fkey")] == Relation("public", "customers")


def test_linked_entries_are_only_those_whose_sql_is_needed() -> None:
    linked = linked_entries(parse_toc(TOC), {"app"})
    assert {e.desc for e in linked} == {"SEQUENCE", "INDEX", "FK CONSTRAINT"}


def test_a_table_takes_its_data_index_sequence_comment_acl_and_schema() -> None:
    selection = select_entries(
        parse_toc(TOC), [Relation("app", "t")], [], script_links(SCRIPT), {"public"}
    )
    assert ids(selection.entries) == {6, 3412, 225, 3414, 3415, 224, 3403, 3420, 3246, 3247}
    assert selection.relations == [Relation("app", "t")]
    assert selection.schemas == ["app"]
    # Its foreign key points at public.customers, which is not restored: left out and said.
    assert 3251 not in ids(selection.entries)
    assert selection.left_out and "public.customers" in selection.left_out[0]
    assert not selection.missing


def test_an_existing_schema_is_not_created_again_and_both_ends_of_a_key_are_kept() -> None:
    tables = [Relation("app", "t"), Relation("public", "customers")]
    selection = select_entries(parse_toc(TOC), tables, [], script_links(SCRIPT), {"public", "app"})
    taken = ids(selection.entries)
    assert 6 not in taken and 3412 not in taken  # schema app exists in the target
    assert 3251 in taken and not selection.left_out
    assert {216, 3416, 3421, 3227, 3235, 3396} <= taken  # customers' sequence, default, key
    assert 3248 not in taken and 3240 not in taken  # orders' key and index


def test_a_schema_with_spaces_takes_everything_in_it() -> None:
    selection = select_entries(parse_toc(TOC), [], ["My S"], script_links(SCRIPT), {"public"})
    assert ids(selection.entries) == {7, 227, 226, 3413, 3231, 3405, 3419}
    assert selection.list_file().splitlines()[0] == "7; 2615 16460 SCHEMA - My S postgres"


def test_names_the_archive_lacks_are_reported() -> None:
    selection = select_entries(
        parse_toc(TOC), [Relation("app", "nope")], ["ghost"], script_links(SCRIPT), {"public"}
    )
    assert selection.missing == ["table app.nope", "schema ghost"]


def test_table_and_schema_values() -> None:
    assert parse_table("app.accounts") == Relation("app", "accounts")
    assert parse_table('"my.schema"."T ""x"""') == Relation("my.schema", 'T "x"')
    assert parse_table('"-x".y') == Relation("-x", "y")
    assert parse_schema("audit") == "audit"
    for bad in ("accounts", "a.b.c", "-n.x", "--schema=x.y", 'a."b', "a.", "a.b\nc"):
        with pytest.raises(RestoreError):
            parse_table(bad)
    with pytest.raises(RestoreError, match="starts with '-'"):
        parse_schema("-x")
    with pytest.raises(RestoreError):
        parse_schema("a.b")


def test_target_database_names() -> None:
    assert check_target_database("shop_restored") == "shop_restored"
    for name in ("template0", "template1", "postgres", ""):
        with pytest.raises(RestoreError):
            check_target_database(name)
    assert check_target_database("é" * 31) == "é" * 31  # 62 bytes
    with pytest.raises(RestoreError, match="64 bytes"):
        check_target_database("é" * 32)
    with pytest.raises(RestoreError, match="70 bytes"):
        check_target_database("x" * 70)


def test_option_combinations() -> None:
    check_request(
        "custom", partial=True, list_only=False, data_only=True, clean=False, globals_=False
    )
    with pytest.raises(RestoreError, match="plain SQL dump"):
        check_request("plain", partial=True, list_only=False, data_only=False, clean=False,
                      globals_=False)  # fmt: skip
    with pytest.raises(RestoreError, match="--clean"):
        check_request("custom", partial=False, list_only=False, data_only=True, clean=True,
                      globals_=False)  # fmt: skip
    with pytest.raises(RestoreError, match="--list"):
        check_request("directory", partial=False, list_only=True, data_only=False, clean=False,
                      globals_=True)  # fmt: skip


SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_before_is_in_the_jobs_zone_unless_one_is_given() -> None:
    assert parse_before("2026-11-30 14:05", SHANGHAI) == datetime(2026, 11, 30, 6, 5, tzinfo=UTC)
    assert parse_before("2026-11-30T14:05Z", SHANGHAI) == datetime(2026, 11, 30, 14, 5, tzinfo=UTC)
    assert parse_before("2026-11-30 14:05+01:00", SHANGHAI) == datetime(
        2026, 11, 30, 13, 5, tzinfo=UTC
    )
    assert parse_before("2026-11-30 14:05 Europe/Berlin", SHANGHAI) == datetime(
        2026, 11, 30, 13, 5, tzinfo=UTC
    )
    assert parse_before("2026-11-30 14:05 UTC", SHANGHAI) == datetime(
        2026, 11, 30, 14, 5, tzinfo=UTC
    )
    for bad in ("yesterday", "2026-11-30 14:05 Mars/Olympus", "2026-11-30 14:05+01:00 UTC"):
        with pytest.raises(RestoreError):
            parse_before(bad, SHANGHAI)


def candidate(
    name: str, hour: int, minute: int, status: str = "SUCCESS", job: str = "j"
) -> Candidate:
    started = datetime(2026, 11, 30, hour, minute, tzinfo=UTC)
    document = {"status": status, "job": job, "database": "db", "id": name}
    return Candidate(Path(f"/r/{name}.json"), started, document)


def test_before_picks_the_newest_success_started_strictly_before() -> None:
    history = [
        candidate("a", 1, 0),
        candidate("b", 5, 0),
        candidate("c", 5, 30, status="FAILED"),
        candidate("d", 6, 5),
        candidate("e", 5, 50, job="other"),
    ]
    moment = datetime(2026, 11, 30, 6, 5, tzinfo=UTC)
    assert pick_before(history, moment, "j", "db").path.name == "b.json"
    later = datetime(2026, 11, 30, 6, 6, tzinfo=UTC)
    assert pick_before(history, later, "j", "db").path.name == "d.json"
    with pytest.raises(RestoreError, match="oldest successful one started at 2026-11-30T01:00"):
        pick_before(history, datetime(2026, 11, 30, 1, 0, tzinfo=UTC), "j", "db")
    line = describe_pick(history[1], SHANGHAI)
    assert "b.json" in line and "2026-11-30 13:00:00 Asia/Shanghai" in line


def test_a_report_id_must_name_exactly_one_report() -> None:
    assert only_report([Path("/r/a.json")], "id", Path("/r")) == Path("/r/a.json")
    with pytest.raises(RestoreError, match="no report with id"):
        only_report([], "id", Path("/r"))
    with pytest.raises(RestoreError, match=r"/r/a\.json, /r/b\.json"):
        only_report([Path("/r/b.json"), Path("/r/a.json")], "id", Path("/r"))
