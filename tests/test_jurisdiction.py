"""Users, jurisdiction and row-level security (issue 12) on a real PostGIS with the sample city (徐汇) and
two more districts (长宁, 静安): for every endpoint family a street-scoped caller sees exactly its
street's rows and a district-scoped caller exactly its district's, compared with SQL run as the owner;
writes outside the jurisdiction are refused (404 for a case that is not theirs); contacts are masked
for roles that do not need them and unmasked reads are audited; the audit trail cannot be changed;
tiles differ by scope; two callers hammering one pooled server never see each other's rows; a bbox
query under a policy still uses the GiST index; owner-level migrations still run with RLS on.
"""
from __future__ import annotations

import json
import re
import threading

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cim.apikeys import create_key, list_keys
from cim.database import engine_for
from cim.jurisdiction import Scope, acting_as
from cim.users import create_user, disable_user
from tests.conftest import run_cim
from tests.servers import serve_app
from tests.test_geocode import SAMPLES, load_city

SRID = 4549
MORE_LAYERS = ("buildings", "parts", "iot-devices", "iot-readings")


def _load_more(engine) -> None:
    from ingest.run import IngestOptions, ingest_files

    for e in json.loads((SAMPLES / "manifest.json").read_text(encoding="utf-8")):
        if e["layer"] in MORE_LAYERS and not e["path"].endswith(".csv") or e["layer"] == "iot-readings":
            options = IngestOptions(crs=e["crs"], encoding=e["encoding"], layer_name=e["layer_name"], x=e["x"],
                                    y=e["y"], z=e["z"], wkt=e["wkt"], address_column=e["address_column"],
                                    mapping=e["map"] or {})
            ingest_files(e["layer"], [SAMPLES / e["path"]], options, engine)


def owner(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


@pytest.fixture(scope="module")
def city(engine):
    load_city(engine)
    _load_more(engine)
    return engine


@pytest.fixture(scope="module")
def streets(city) -> tuple[str, str]:
    """The two streets of 徐汇 with most buildings: A and B."""
    rows = owner(city, "SELECT street_code FROM buildings WHERE valid_to IS NULL AND street_code IS NOT NULL "
                       "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 2")
    return rows[0][0], rows[1][0]


@pytest.fixture(scope="module")
def keys(city, streets) -> dict[str, dict[str, str]]:
    a, b = streets
    users = {"a_viewer": ("viewer", {"street": a}), "a_handler": ("handler", {"street": a}),
             "b_viewer": ("viewer", {"street": b}), "xh_viewer": ("viewer", {"district": "310104"}),
             "cn_viewer": ("viewer", {"district": "310105"}), "city_admin": ("admin", {"city": True}),
             "gone": ("viewer", {"street": a})}
    out = {}
    with city.begin() as conn:
        for name, (role, scope) in users.items():
            user = create_user(conn, name, role, **scope)
            out[name] = {"X-API-Key": create_key(conn, user=user)[1]}
        disable_user(conn, "gone")
    return out


@pytest.fixture(scope="module")
def client(city):
    return TestClient(create_app(city))


SCOPES = {"a_viewer": "street", "xh_viewer": "district", "cn_viewer": "district"}


def _scope_sql(streets, who: str) -> str:
    a, _ = streets
    return {"a_viewer": f"street_code = '{a}'", "xh_viewer": "district_code = '310104'",
            "cn_viewer": "district_code = '310105'"}[who]


# --- reading: every endpoint family ------------------------------------------------------------

@pytest.mark.parametrize("layer,table", [("addresses", "addresses"), ("buildings", "buildings"),
                                         ("parts", "parts"), ("iot-devices", "iot_devices"), ("grids", "grids")])
def test_items_are_exactly_the_callers_rows(client, keys, city, streets, layer, table):
    total = owner(city, f"SELECT count(*) FROM {table} WHERE valid_to IS NULL")[0][0]
    assert total > 0
    r = client.get(f"/collections/{layer}/items", params={"limit": 10000})
    assert r.status_code == 200 and r.json()["numberMatched"] == total  # anonymous: the public layer
    for who in SCOPES:
        expected = {str(f) for (f,) in owner(city, f"SELECT feature_id FROM {table} WHERE valid_to IS NULL "
                                                   f"AND {_scope_sql(streets, who)}")}
        body = client.get(f"/collections/{layer}/items", params={"limit": 10000}, headers=keys[who]).json()
        assert body["numberMatched"] == len(expected), who
        assert {str(f["id"]) for f in body["features"]} == expected, who


def test_one_feature_outside_the_jurisdiction_is_404(client, keys, city, streets):
    a, b = streets
    (inside,), (outside,) = (owner(city, "SELECT feature_id FROM buildings WHERE valid_to IS NULL AND street_code = :s "
                                         "LIMIT 1", s=s)[0] for s in (a, b))
    assert client.get(f"/collections/buildings/items/{inside}", headers=keys["a_viewer"]).status_code == 200
    assert client.get(f"/collections/buildings/items/{outside}", headers=keys["a_viewer"]).status_code == 404
    assert client.get(f"/collections/buildings/items/{outside}").status_code == 200  # public layer


def test_stats_count_only_the_callers_rows(client, keys, city, streets):
    a, _ = streets
    body = client.get("/collections/addresses/stats", params={"group_by": "street"}, headers=keys["a_viewer"]).json()
    expected = owner(city, "SELECT count(*) FROM addresses WHERE valid_to IS NULL AND street_code = :s", s=a)[0][0]
    text = json.dumps(body)
    assert a in text
    others = [s for (s,) in owner(city, "SELECT code FROM streets WHERE valid_to IS NULL AND code <> :s", s=a)]
    assert not any(s in text for s in others)
    assert str(expected) in text


def _lonlat(city, table: str, street: str) -> tuple[float, float]:
    return owner(city, f"SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(ST_PointOnSurface(ST_Force2D(geom)), 4326) "
                       f"AS p FROM {table} WHERE valid_to IS NULL AND street_code = :s ORDER BY fid LIMIT 1) q",
                 s=street)[0]


def test_nearby_finds_only_the_callers_rows(client, keys, city, streets):
    a, b = streets
    lon, lat = _lonlat(city, "buildings", b)
    params = {"layer": "buildings", "lon": lon, "lat": lat, "radius": 5000, "k": 100}
    everyone = client.get("/nearby", params=params).json()["features"]
    assert any(f["properties"]["street_code"] == b for f in everyone)
    mine = client.get("/nearby", params=params, headers=keys["a_viewer"]).json()["features"]
    assert mine and {f["properties"]["street_code"] for f in mine} == {a}


def test_grid_lookup_answers_only_inside_the_jurisdiction(client, keys, city, streets):
    a, b = streets
    lon, lat = _lonlat(city, "grids", b)
    assert client.get("/grid/lookup", params={"lon": lon, "lat": lat}).json()["results"][0]["grid"]
    foreign = client.get("/grid/lookup", params={"lon": lon, "lat": lat}, headers=keys["a_viewer"]).json()
    assert foreign["results"][0]["grid"] is None and foreign["results"][0]["responsibility"] == []
    lon, lat = _lonlat(city, "grids", a)
    own = client.get("/grid/lookup", params={"lon": lon, "lat": lat}, headers=keys["a_viewer"]).json()
    assert own["results"][0]["street"]["code"] == a
    # responsible persons' phones: masked for a viewer, not for a handler (whose read is audited)
    masked = [p["contact"] for r in own["results"][0]["responsibility"] for p in r["persons"] if p["contact"]]
    handler = client.get("/grid/lookup", params={"lon": lon, "lat": lat}, headers=keys["a_handler"]).json()
    plain = [p["contact"] for r in handler["results"][0]["responsibility"] for p in r["persons"] if p["contact"]]
    assert masked and len(masked) == len(plain) and all("****" in c for c in masked)
    assert not any("****" in c for c in plain)
    assert owner(city, "SELECT actor FROM audit_log WHERE object = 'persons' ORDER BY id DESC LIMIT 1") == [("a_handler",)]


def test_geocode_gives_no_foreign_address(client, keys, city, streets):
    a, b = streets
    (road, door), = owner(city, "SELECT road, door_number FROM addresses WHERE valid_to IS NULL AND street_code = :s "
                                "AND door_number IS NOT NULL AND road IS NOT NULL ORDER BY fid LIMIT 1", s=b)
    q = f"上海市徐汇区{road}{door}号"
    assert client.get("/geocode", params={"q": q}).json()["match_level"] == "door"
    assert client.get("/geocode", params={"q": q}, headers=keys["b_viewer"]).json()["match_level"] == "door"
    foreign = client.get("/geocode", params={"q": q}, headers=keys["a_viewer"]).json()
    assert foreign["match_level"] != "door"
    # no grid of street B and nobody responsible there: at most a coarser match on what A may see
    assert not re.search(b + r"\d{6}", json.dumps(foreign)), foreign
    own = client.get("/geocode", params={"q": q}, headers=keys["b_viewer"]).json()
    contacts = [p["contact"] for r in own["assignment"]["responsibility"] for p in r["persons"] if p["contact"]]
    assert contacts and all("****" in c for c in contacts)


def test_iot_readings_of_a_foreign_device_are_404(client, keys, city, streets):
    a, b = streets
    devices = {s: (d, q) for s, d, q in owner(
        city, "SELECT DISTINCT ON (d.street_code) d.street_code, d.source_id, r.quantity FROM iot_devices d "
              "JOIN iot_readings r ON r.device_id = d.source_id WHERE d.valid_to IS NULL "
              "AND d.street_code IN (:a, :b) ORDER BY d.street_code, d.source_id", a=a, b=b)}
    if set(devices) != {a, b}:
        pytest.fail(f"the sample city needs devices with readings in streets {a} and {b}: {devices}")
    for street, status in ((a, 200), (b, 404)):
        device, quantity = devices[street]
        r = client.get(f"/iot/devices/{device}/readings", headers=keys["a_viewer"],
                       params={"from": "2000-01-01", "to": "2100-01-01", "quantity": quantity})
        assert r.status_code == status, r.text
        if status == 200:
            assert r.json() != {}


# --- cases: reading, writing, masking, audit ---------------------------------------------------

@pytest.fixture(scope="module")
def cases(client, keys, city, streets) -> dict[str, int]:
    """One case in each of streets A and B and in 长宁, reported by the city's admin."""
    a, b = streets
    out = {}
    for name, street in (("a", a), ("b", b), ("cn", "310105001")):
        lon, lat = _lonlat(city, "addresses", street)
        r = client.post("/cases", json={"channel": "vehicle_patrol", "class": "道路破损", "lon": lon, "lat": lat,
                                        "description": f"case in {street}", "reporter_contact": "13912345678"},
                        headers=keys["city_admin"])
        assert r.status_code == 201, r.text
        out[name] = r.json()["id"]
    return out


def test_cases_list_is_exactly_the_callers(client, keys, city, cases, streets):
    a, _ = streets
    for who in SCOPES:
        expected = {i for (i,) in owner(city, f"SELECT id FROM cases WHERE {_scope_sql(streets, who)}")}
        got = {c["id"] for c in client.get("/cases", headers=keys[who]).json()["cases"]}
        assert got == expected, who
    assert client.get(f"/cases/{cases['b']}", headers=keys["a_viewer"]).status_code == 404
    assert client.get(f"/cases/{cases['a']}", headers=keys["a_viewer"]).status_code == 200
    # the case layer (a view) honours it too
    body = client.get("/collections/cases/items", headers=keys["a_viewer"]).json()
    assert {f["properties"]["street_code"] for f in body["features"]} == {a}


def test_a_street_handler_cannot_act_on_another_streets_case(client, keys, cases, city, streets):
    b_case = cases["b"]
    before = owner(city, "SELECT version, status FROM cases WHERE id = :i", i=b_case)
    r = client.post(f"/cases/{b_case}/actions", json={"action": "register", "role": "supervisor"},
                    headers=keys["a_handler"])
    assert r.status_code == 404, r.text
    assert owner(city, "SELECT version, status FROM cases WHERE id = :i", i=b_case) == before
    # nor report one there: the row it would make is not theirs
    lon, lat = _lonlat(city, "addresses", streets[1])
    r = client.post("/cases", json={"class": "道路破损", "lon": lon, "lat": lat, "channel": "vehicle_patrol"},
                    headers=keys["a_handler"])
    assert r.status_code == 403, r.text
    lon, lat = _lonlat(city, "addresses", streets[0])
    r = client.post("/cases", json={"class": "道路破损", "lon": lon, "lat": lat, "channel": "vehicle_patrol"},
                    headers=keys["a_handler"])
    assert r.status_code == 201, r.text


def test_contacts_masked_unless_the_role_needs_them_and_unmasked_reads_audited(client, keys, cases, city):
    case = cases["a"]
    assert client.get(f"/cases/{case}", headers=keys["a_viewer"]).json()["reporter_contact"] == "139****5678"
    assert client.get(f"/cases/{case}").json()["reporter_contact"] == "139****5678"
    before = owner(city, "SELECT count(*) FROM audit_log WHERE action = 'read_unmasked'")[0][0]
    assert client.get(f"/cases/{case}", headers=keys["a_handler"]).json()["reporter_contact"] == "13912345678"
    row = owner(city, "SELECT actor, object, detail, role, request FROM audit_log WHERE action = 'read_unmasked' "
                      "ORDER BY id DESC LIMIT 1")[0]
    assert owner(city, "SELECT count(*) FROM audit_log WHERE action = 'read_unmasked'")[0][0] == before + 1
    assert row[0] == "a_handler" and row[1] == "cases" and row[2] == {"case": case} and row[3] == "handler"
    assert row[4] == f"GET /cases/{case}"


def test_writes_are_audited_with_who_and_from_where(city, cases):
    rows = owner(city, "SELECT actor, role, client, request FROM audit_log WHERE object = 'cases' "
                       "AND action = 'insert' AND request = 'POST /cases'")
    assert ("city_admin", "admin", "testclient", "POST /cases") in rows


def test_the_audit_trail_cannot_be_changed(city, cases):
    scoped = engine_for(city.url.render_as_string(hide_password=False), scoped=True)
    with acting_as(Scope("city", role="admin", user="x")), scoped.connect() as conn:
        for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log",
                    "INSERT INTO audit_log (actor, action, object) VALUES ('x', 'insert', 'cases')"):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                with conn.begin_nested():
                    conn.exec_driver_sql(sql)
    for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), city.begin() as conn:  # not even the owner
            conn.exec_driver_sql(sql)


# --- keys, users, tokens -----------------------------------------------------------------------

def test_disabled_user_and_unknown_key_are_401_never_anonymous(client, keys):
    for headers in (keys["gone"], {"X-API-Key": "cim_not-a-key"}):
        r = client.get("/collections/buildings/items", headers=headers)
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")


def test_users_are_checked_against_the_base(city):
    from cim.errors import UserError

    with city.begin() as conn:
        for scope, message in (({"street": "999999999"}, "no current street"),
                               ({"district": "310104", "street": "310105001"}, "lies in district"),
                               ({}, "needs a jurisdiction"), ({"grid": ()}, None)):
            if message is None:
                continue
            with pytest.raises(UserError, match=message):
                create_user(conn, "bad", "viewer", **scope)


def test_cli_users_keys_audit_and_as(city, db_url, cases, streets):
    a, _ = streets
    run_cim("users", "create", "cli_street", "--role", "operator", "--street", a, db_url=db_url)
    listed = run_cim("users", "list", db_url=db_url).stdout
    assert "cli_street" in listed and a in listed
    key = run_cim("keys", "create", "--user", "cli_street", db_url=db_url).stdout.strip()
    assert key.startswith("cim_")
    with city.connect() as conn:
        assert [k.user.describe() for k in list_keys(conn) if k.user and k.user.name == "cli_street"] == [f"street {a}"]
    shown = run_cim("--as", "cli_street", "cases", "list", db_url=db_url, check=False)
    everything = run_cim("cases", "list", db_url=db_url, check=False)
    assert shown.returncode == 0, shown.stderr
    assert f"case in {a}" in shown.stdout and "case in 310105001" not in shown.stdout
    assert "case in 310105001" in everything.stdout
    exported = run_cim("audit", "--format", "csv", "--action", "insert", "--actor", "city_admin", db_url=db_url).stdout
    assert exported.splitlines()[0].startswith("id,at,actor") and "city_admin" in exported
    run_cim("users", "disable", "cli_street", db_url=db_url)
    refused = run_cim("--as", "cli_street", "cases", "list", db_url=db_url, check=False)
    assert refused.returncode == 1 and "disabled" in refused.stderr


# --- tiles ---------------------------------------------------------------------------------------

def test_vector_tiles_differ_by_scope(client, keys, city, streets):
    import math

    lon, lat = _lonlat(city, "buildings", streets[0])
    z = 14
    x = int((lon + 180) / 360 * 2 ** z)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * 2 ** z)
    path = f"/collections/buildings/tiles/WebMercatorQuad/{z}/{y}/{x}"
    public, a, b = (client.get(path, headers=h) for h in ({}, keys["a_viewer"], keys["b_viewer"]))
    assert public.status_code == a.status_code == 200
    assert a.content != public.content and len(a.content) < len(public.content)
    assert b.status_code in (200, 204) and b.content != a.content
    # the same scope again: the same bytes (from the scope's cache), and public's stay public's
    assert client.get(path, headers=keys["a_viewer"]).content == a.content
    assert client.get(path).content == public.content
    assert a.headers["etag"] != public.headers["etag"]
    # TileJSON's versioned URLs are answered from memory before routing: per scope there too
    template = client.get("/collections/buildings/tiles/WebMercatorQuad/tilejson.json").json()["tiles"][0]
    versioned = template.split("://", 1)[1].split("/", 1)[1].replace("{z}", str(z)).replace("{y}", str(y))
    versioned = "/" + versioned.replace("{x}", str(x))
    assert client.get(versioned).content == public.content  # now in memory, the public's
    assert client.get(versioned, headers=keys["a_viewer"]).content == a.content


def test_3d_tilesets_differ_by_scope(client, keys):
    public = client.get("/3dtiles/buildings/tileset.json").json()
    mine = client.get("/3dtiles/buildings/tileset.json", headers=keys["a_viewer"]).json()
    assert json.dumps(mine) != json.dumps(public)


# --- the mechanism ---------------------------------------------------------------------------------

def test_a_bbox_query_under_a_policy_uses_the_gist_index(city, streets):
    from cim.selection import Selection
    from cim.registry import load_layers
    from cim.schema import tables_for

    scoped = engine_for(city.url.render_as_string(hide_password=False), scoped=True)
    with city.connect() as conn:
        layer = load_layers(conn)["buildings"]
    table = tables_for(SRID)["buildings"]
    where = Selection(bbox=(121.43, 31.18, 121.44, 31.19)).clauses(layer, table, table.c.geom, SRID)
    query = sa.select(table.c.fid).where(*where)
    with acting_as(Scope("area", street=streets[0])), scoped.begin() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # the sample is small: ask whether it *can*
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert "ix_buildings_geom" in plan and "Index Cond" in plan, plan
    assert "cim.street" in plan  # the policy is there


def test_pooled_connections_never_carry_a_scope(city, streets):
    scoped = engine_for(city.url.render_as_string(hide_password=False), scoped=True)
    with acting_as(Scope("area", street=streets[0])), scoped.connect() as conn:
        assert conn.exec_driver_sql("SELECT current_user, current_setting('cim.street', true)").one()[1] == streets[0]
    with city.begin() as conn:  # the API role without any scope set: sees nothing, writes nothing
        conn.exec_driver_sql("SET LOCAL ROLE cim_api")
        assert conn.exec_driver_sql("SELECT count(*) FROM buildings").scalar() == 0
        assert conn.exec_driver_sql("UPDATE cases SET description = 'x'").rowcount == 0
    raw = scoped.raw_connection()  # the same pool, outside any scope hook
    try:
        with raw.cursor() as cur:
            cur.execute("SELECT current_user = session_user, coalesce(current_setting('cim.street', true), '')")
            assert cur.fetchone() == (True, "")
    finally:
        raw.close()


def test_every_table_with_area_codes_is_protected(city):
    """A table or view a later migration adds with district/street/grid codes must have its policies
    (cim.jurisdiction.protect_sql) — and a view must run as its caller."""
    bare = owner(city, """
        SELECT DISTINCT c.table_name FROM information_schema.columns c
        JOIN pg_class k ON k.relname = c.table_name AND k.relnamespace = 'public'::regnamespace
        WHERE c.table_schema = 'public' AND c.column_name IN ('district_code', 'street_code', 'grid_code')
          AND k.relkind IN ('r', 'p') AND NOT k.relispartition
          AND k.relname <> 'users'  -- who has which jurisdiction: the API reads it, never writes it
          AND (NOT k.relrowsecurity OR NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = k.oid))""")
    assert bare == []
    views = owner(city, """
        SELECT k.relname FROM pg_class k JOIN information_schema.columns c ON c.table_name = k.relname
        WHERE k.relkind = 'v' AND k.relnamespace = 'public'::regnamespace AND c.column_name = 'street_code'
          AND NOT coalesce('security_invoker=true' = ANY (k.reloptions), false)""")
    assert views == []


def test_two_callers_hammering_one_server_never_see_each_others_rows(city, db_url, keys, streets):
    a, b = streets
    failures: list[str] = []

    with serve_app(db_url, env={"CIM_DB_POOL_SIZE": "2"}) as base:
        def hammer(who: str, street: str) -> None:
            with httpx.Client(base_url=base, headers=keys[who], timeout=60) as http:
                for i in range(40):
                    path = ("/collections/buildings/items?limit=200" if i % 2 else "/collections/addresses/items"
                                                                                   "?limit=200")
                    body = http.get(path).json()
                    seen = {f["properties"].get("street_code") for f in body["features"]}
                    if seen != {street}:
                        failures.append(f"{who} saw {seen} on {path}")

        threads = [threading.Thread(target=hammer, args=args) for args in
                   (("a_viewer", a), ("b_viewer", b), ("a_viewer", a), ("b_viewer", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


def test_owner_level_migrations_still_work_with_rls_on(city, db_url):
    """The owner is not subject to the policies: a downgrade and upgrade of 0006 (which rewrites every
    protected table's policies) and an owner's update of a protected table see every row."""
    with city.begin() as conn:
        n = conn.exec_driver_sql("UPDATE addresses SET attributes = attributes WHERE valid_to IS NULL").rowcount
    assert n == owner(city, "SELECT count(*) FROM addresses WHERE valid_to IS NULL")[0][0]
    from alembic import command

    from cim.bootstrap import _alembic_config

    with city.begin() as conn:
        command.downgrade(_alembic_config(conn, SRID), "0005_sensing")
    assert owner(city, "SELECT count(*) FROM pg_policy")[0][0] == 0
    with city.begin() as conn:
        command.upgrade(_alembic_config(conn, SRID), "head")
    assert owner(city, "SELECT count(*) FROM pg_policy WHERE polname = 'cim_read'")[0][0] >= 10


# --- bearer JWTs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    """An identity provider: an RSA key whose public half is in a JWKS file, and another key nobody trusts."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    trusted, forger = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(trusted.public_key()))
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    return {"trusted": trusted, "forger": forger, "jwks": path.as_uri(), "iss": "https://idp.example"}


def _token(issuer, key="trusted", expires_in=600, **claims) -> dict[str, str]:
    import time

    import jwt

    body = {"iss": issuer["iss"], "sub": "idp-user", "exp": int(time.time()) + expires_in, **claims}
    return {"Authorization": "Bearer " + jwt.encode(body, issuer[key], algorithm="RS256", headers={"kid": "k1"})}


def test_bearer_jwt_carries_the_jurisdiction_and_bad_tokens_are_401(city, issuer, streets):
    from cim.config import DeploymentSettings

    a, _ = streets
    app = create_app(city, DeploymentSettings(jwt_issuer=issuer["iss"], jwt_jwks_url=issuer["jwks"]))
    client = TestClient(app)
    good = _token(issuer, cim_role="viewer", cim_street=a)
    body = client.get("/collections/buildings/items", params={"limit": 10000}, headers=good).json()
    expected = owner(city, "SELECT count(*) FROM buildings WHERE valid_to IS NULL AND street_code = :s", s=a)[0][0]
    assert body["numberMatched"] == expected and {f["properties"]["street_code"] for f in body["features"]} == {a}
    bad = {"expired": _token(issuer, expires_in=-60, cim_role="viewer", cim_street=a),
           "forged": _token(issuer, key="forger", cim_role="viewer", cim_city=True),
           "unknown district": _token(issuer, cim_role="viewer", cim_district="319999"),
           "street outside the district": _token(issuer, cim_role="viewer", cim_district="310105", cim_street=a),
           "no jurisdiction": _token(issuer, cim_role="viewer"),
           "unknown role": _token(issuer, cim_role="root", cim_city=True),
           "other issuer": {"Authorization": _token({**issuer, "iss": "https://evil.example"}, cim_role="admin",
                                                    cim_city=True)["Authorization"]}}
    for what, headers in bad.items():
        r = client.get("/collections/buildings/items", headers=headers)
        assert r.status_code == 401, what
        assert r.headers["content-type"].startswith("application/problem+json"), what


def test_a_case_import_writes_in_the_callers_jurisdiction(city, streets, tmp_path):
    """``cim --as`` a street's user: the import writes its chunks in a writer thread, still under that
    street's policies and in that user's name — a report in the street goes in, one outside is refused."""
    from cases.importer import import_cases
    from cim.errors import UserError

    a, b = streets
    scoped = engine_for(city.url.render_as_string(hide_password=False), scoped=True)
    for street, ticket in ((a, "AS-A"), (b, "AS-B")):
        lon, lat = _lonlat(city, "addresses", street)
        src = tmp_path / f"{ticket}.csv"
        src.write_text(f"channel,class,x,y,external_id\nvehicle_patrol,道路破损,{lon},{lat},{ticket}\n", encoding="utf-8")
        with acting_as(Scope("area", role="handler", user="importer_a", street=a)):
            if street == a:
                assert import_cases(scoped, src).created == 1
            else:
                with pytest.raises(UserError, match="outside your jurisdiction"):
                    import_cases(scoped, src)
    assert owner(city, "SELECT external_id, street_code FROM cases WHERE external_id LIKE 'AS-%'") == [("AS-A", a)]
    assert owner(city, "SELECT actor FROM audit_log WHERE object = 'cases' AND action = 'insert' "
                       "ORDER BY id DESC LIMIT 1") == [("importer_a",)]
