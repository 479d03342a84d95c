"""The city's vital signs (城市生命体征, issue 13 item 4): the indicator catalogue and the time series
of its values per area.

* ``vital_indicators``: one row per indicator — code, Chinese and English name, one of the six
  dimensions, unit, how it is computed (a measure of the ``vitals`` package, or ``fed`` for values a
  city loads from its own feeds), the direction in which it gets worse with the yellow and red
  thresholds, the levels it is computed at, and the time window it looks back over. The rows are
  seeded by the ``vitals`` package from its own CSV on first use (``cim vitals catalogue load``);
  the core never imports an edge, so this revision only makes the table.
* ``vital_values``: (indicator, level, area code, time) → value and status (green / yellow / red;
  NULL for an indicator without thresholds), from a computation or a loaded feed. One row per key:
  computing the same time again replaces it.
* ``vital_status(value, direction, yellow, red)``: the one rule that turns a value into a status,
  used by the computation and by the loader alike.

Revision ID: 0006_vitals
Revises: 0006_sensing_alerts
"""
from alembic import op

revision = "0006_vitals"
down_revision = "0006_sensing_alerts"
branch_labels = None
depends_on = None

DIMENSIONS = ("基础设施", "城市环境", "城市交通", "城市保障", "城市安全", "城市活力")
LEVELS = ("city", "district", "street", "grid")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def upgrade() -> None:
    op.execute(f"""
CREATE TABLE vital_indicators (
    code text PRIMARY KEY,
    name_zh text NOT NULL,
    name_en text NOT NULL,
    dimension text NOT NULL CHECK (dimension IN ({_in(DIMENSIONS)})),
    unit text NOT NULL,
    compute text NOT NULL,               -- a measure of vitals.measures, or 'fed'
    direction text NOT NULL CHECK (direction IN ('higher_worse', 'lower_worse')),
    yellow double precision,
    red double precision,
    levels text[] NOT NULL CHECK (levels <@ ARRAY[{_in(LEVELS)}]::text[] AND cardinality(levels) > 0),
    window_text text,                    -- e.g. '30 days': how far back the measure looks
    description text,
    CHECK ((yellow IS NULL) = (red IS NULL)),
    CHECK (yellow IS NULL OR (direction = 'higher_worse' AND yellow <= red)
           OR (direction = 'lower_worse' AND yellow >= red))
)""")
    op.execute(f"""
CREATE TABLE vital_values (
    -- no foreign key to vital_indicators: a run writes ~50 values per area (a million at Shanghai's 20,000
    -- grids), and a per-row FK check cost more than the inserts; only the catalogue's codes are written
    -- (vitals.compute reads them from it, vitals.feed checks every row against it)
    indicator text NOT NULL,
    level text NOT NULL CHECK (level IN ({_in(LEVELS)})),
    area_code text NOT NULL,
    at timestamptz NOT NULL,
    value double precision NOT NULL CHECK (value = value),  -- no NaN
    status text CHECK (status IN ('green', 'yellow', 'red')),
    source text NOT NULL CHECK (source IN ('computed', 'fed')),
    written_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_vital_values PRIMARY KEY (indicator, level, area_code, at)
)""")
    # a run at a time already computed replaces that time's values: found by time
    op.execute("CREATE INDEX ix_vital_values_at ON vital_values (at)")
    op.execute("""
CREATE FUNCTION vital_status(value double precision, direction text, yellow double precision,
                             red double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN value IS NULL OR yellow IS NULL THEN NULL
    WHEN direction = 'higher_worse' THEN
        CASE WHEN value >= red THEN 'red' WHEN value >= yellow THEN 'yellow' ELSE 'green' END
    ELSE CASE WHEN value <= red THEN 'red' WHEN value <= yellow THEN 'yellow' ELSE 'green' END
END
$$""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS vital_values")
    op.execute("DROP TABLE IF EXISTS vital_indicators")
    op.execute("DROP FUNCTION IF EXISTS vital_status(double precision, text, double precision, double precision)")
