"""Create the small text-to-SQL example used by ``curate_sql.yaml``: two SQLite databases and a JSONL.

    python -m fastdistill.curation.examples.make_sql_example [OUT_DIR]

OUT_DIR defaults to ``sql_data`` next to this file. Rows look like teacher output: a question,
the database, the gold SQL and the raw ``completion`` (fences, prose, several statements...).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SHOP = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), amount REAL, day TEXT);
INSERT INTO customers VALUES (1,'Ada','Paris'),(2,'Bo','Oslo'),(3,'Cy','Paris'),(4,'Di','Lima');
INSERT INTO orders VALUES (1,1,10.5,'2024-01-02'),(2,1,20.0,'2024-01-05'),(3,2,7.25,'2024-02-01'),
                          (4,3,99.0,'2024-02-03'),(5,3,1.0,'2024-03-09'),(6,4,45.5,'2024-03-10');
"""

SCHOOL = """
CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT, year INTEGER);
CREATE TABLE grades (student_id INTEGER, course TEXT, grade INTEGER);
INSERT INTO students VALUES (1,'Eve',1),(2,'Fin',2),(3,'Gus',2),(4,'Hal',3);
INSERT INTO grades VALUES (1,'math',90),(1,'art',75),(2,'math',60),(3,'math',85),(3,'art',95),(4,'art',70);
"""

ROWS = [
    # correct, written differently from the gold query
    {"question": "Names of customers in Paris.", "db_path": "shop.db",
     "gold_sql": "SELECT name FROM customers WHERE city = 'Paris'",
     "completion": "Here is the query:\n```sql\nselect c.name from customers as c where c.city='Paris';\n```"},
    # exact duplicate of the row above (different whitespace)
    {"question": "Names of customers  in Paris.", "db_path": "shop.db",
     "gold_sql": "SELECT name FROM customers WHERE city = 'Paris'",
     "completion": "Here is the query:\n```sql\nselect c.name from customers as c where c.city='Paris';\n```"},
    {"question": "Total order amount per customer name, highest first.", "db_path": "shop.db",
     "gold_sql": "SELECT c.name, SUM(o.amount) AS total FROM customers c JOIN orders o ON o.customer_id = c.id "
                 "GROUP BY c.name ORDER BY total DESC",
     "completion": "SELECT name, SUM(amount) FROM orders JOIN customers ON customers.id = orders.customer_id "
                   "GROUP BY name ORDER BY SUM(amount) DESC;\n\nThis sums the amounts per customer."},
    # wrong order for an ordered gold query
    {"question": "Customer names sorted alphabetically.", "db_path": "shop.db",
     "gold_sql": "SELECT name FROM customers ORDER BY name",
     "completion": "```sql\nSELECT name FROM customers ORDER BY name DESC\n```"},
    # wrong answer
    {"question": "How many orders are there?", "db_path": "shop.db",
     "gold_sql": "SELECT COUNT(*) FROM orders",
     "completion": "SELECT COUNT(*) FROM customers"},
    # malformed SQL
    {"question": "Cities with more than one customer.", "db_path": "shop.db",
     "gold_sql": "SELECT city FROM customers GROUP BY city HAVING COUNT(*) > 1",
     "completion": "```sql\nSELECT city FROM customers GROUP BY city HAVING COUNT(*) > 1 AND\n```"},
    # tries to modify the database
    {"question": "Remove all orders.", "db_path": "shop.db",
     "gold_sql": "SELECT COUNT(*) FROM orders",
     "completion": "DELETE FROM orders; SELECT COUNT(*) FROM orders;"},
    {"question": "Average grade in math.", "db_path": "school.db",
     "gold_sql": "SELECT AVG(grade) FROM grades WHERE course = 'math'",
     "completion": "The answer:\n```\nSELECT avg(g.grade) FROM grades g WHERE g.course = \"math\"\n```\nDone."},
    {"question": "Students in year 2 (any order).", "db_path": "school.db",
     "gold_sql": "SELECT name FROM students WHERE year = 2",
     "completion": "SELECT name FROM students WHERE year = 2 ORDER BY name DESC"},
    {"question": "Best grade of each student.", "db_path": "school.db",
     "gold_sql": "SELECT s.name, MAX(g.grade) FROM students s JOIN grades g ON g.student_id = s.id GROUP BY s.name",
     "completion": "SELECT name, MAX(grade) FROM students, grades WHERE students.id = grades.student_id GROUP BY name"},
    # no SQL at all
    {"question": "Which student has id 4?", "db_path": "school.db",
     "gold_sql": "SELECT name FROM students WHERE id = 4",
     "completion": "I am not sure which table to use."},
]


def make(out_dir: str | Path) -> Path:
    """Write ``shop.db``, ``school.db`` and ``sql_example.jsonl`` into ``out_dir``; return the JSONL path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, script in (("shop.db", SHOP), ("school.db", SCHOOL)):
        path = out / name
        path.unlink(missing_ok=True)
        with sqlite3.connect(path) as conn:
            conn.executescript(script)
        conn.close()
    jsonl = out / "sql_example.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    logger.info("wrote %s and 2 databases", jsonl)
    return jsonl


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    make(argv[0] if argv else Path(__file__).parent / "sql_data")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
