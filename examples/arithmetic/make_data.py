"""Writes validation.jsonl and test.jsonl: short word problems with integer answers.

Every gold answer is computed here from the numbers in its question, so the data
set is checked by construction: `python examples/arithmetic/make_data.py` rewrites
both files (they are committed; running it again changes nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (category, question, gold) -- the gold is an expression over the question's numbers
PROBLEMS = [
    ("addition", "A farmer has 23 cows and buys 19 more. How many cows does the farmer have now?", 23 + 19),
    ("addition", "Mia read 48 pages on Monday and 37 pages on Tuesday. How many pages did she read in total?", 48 + 37),
    ("addition", "A school has 312 boys and 289 girls. How many students does the school have?", 312 + 289),
    ("addition", "A shop sold 1,250 apples in the morning and 875 in the afternoon. How many apples did it sell?",
     1250 + 875),
    ("subtraction", "Tom had 75 marbles and gave 28 to his friend. How many marbles does Tom have left?", 75 - 28),
    ("subtraction", "A train had 240 passengers. At the first stop 67 got off. How many passengers are still on "
     "the train?", 240 - 67),
    ("subtraction", "A tank holds 500 liters of water. 137 liters are used. How many liters remain?", 500 - 137),
    ("subtraction", "The temperature was 4 degrees in the morning and fell by 11 degrees by night. What was the "
     "temperature at night, in degrees?", 4 - 11),
    ("multiplication", "A box holds 12 eggs. How many eggs are in 15 boxes?", 12 * 15),
    ("multiplication", "Each ticket costs 8 dollars. How many dollars do 27 tickets cost?", 8 * 27),
    ("multiplication", "A garden has 14 rows with 23 plants in each row. How many plants are in the garden?", 14 * 23),
    ("multiplication", "A car travels 65 kilometers every hour. How many kilometers does it travel in 6 hours?",
     65 * 6),
    ("division", "96 candies are shared equally among 8 children. How many candies does each child get?", 96 // 8),
    ("division", "A rope 144 meters long is cut into pieces of 12 meters. How many pieces are there?", 144 // 12),
    ("division", "A bus company needs to carry 252 people in buses of 36 seats each, every bus full. How many "
     "buses does it need?", 252 // 36),
    ("division", "Lena saves the same amount each week and saved 390 dollars in 15 weeks. How many dollars does "
     "she save each week?", 390 // 15),
    ("multi-step", "Sam buys 3 notebooks at 4 dollars each and a pen for 2 dollars. How many dollars does he "
     "spend?", 3 * 4 + 2),
    ("multi-step", "A baker makes 5 trays of 24 cookies and sells 87 of them. How many cookies are left?",
     5 * 24 - 87),
    ("multi-step", "There are 7 shelves with 18 books each. 25 books are taken away. How many books remain on the "
     "shelves?", 7 * 18 - 25),
    ("multi-step", "Anna has 50 dollars. She buys 2 books at 13 dollars each. How many dollars does she have "
     "left?", 50 - 2 * 13),
    ("multi-step", "A class of 28 students splits into teams of 4, and each team gets 3 balls. How many balls are "
     "handed out?", 28 // 4 * 3),
    ("multi-step", "A worker earns 15 dollars an hour and works 8 hours a day for 5 days. How many dollars does he "
     "earn?", 15 * 8 * 5),
    ("multi-step", "A parking lot has 4 levels with 35 spaces each. 96 cars are parked. How many spaces are "
     "free?", 4 * 35 - 96),
    ("multi-step", "Jack is 12 years old. His father is 3 times as old as Jack. How old will his father be in 5 "
     "years?", 12 * 3 + 5),
    ("percent", "A jacket costs 80 dollars and is sold at 25 percent off. How many dollars does it cost now?",
     80 * 75 // 100),
    ("percent", "Of 200 students, 35 percent walk to school. How many students walk to school?", 200 * 35 // 100),
    ("percent", "A town of 4,000 people grows by 10 percent. How many people live there now?", 4000 * 110 // 100),
    ("time", "A movie starts at 7 o'clock and lasts 135 minutes. How many minutes after 8 o'clock does it end?",
     135 - 60),
    ("time", "How many minutes are there in 3 hours and 20 minutes?", 3 * 60 + 20),
    ("time", "How many hours are there in 2 weeks?", 2 * 7 * 24),
    ("geometry", "A rectangle is 9 centimeters long and 7 centimeters wide. What is its area in square "
     "centimeters?", 9 * 7),
    ("geometry", "A square has sides of 13 meters. What is its perimeter in meters?", 4 * 13),
    ("geometry", "A rectangular field is 40 meters long and 25 meters wide. How many meters of fence go around "
     "it?", 2 * (40 + 25)),
    ("geometry", "A cube has edges of 5 centimeters. What is its volume in cubic centimeters?", 5 ** 3),
    ("money", "Pencils cost 35 cents each. How many cents do 9 pencils cost?", 35 * 9),
    ("money", "Ben pays for a 17 dollar meal with a 50 dollar bill. How many dollars of change does he get?",
     50 - 17),
    ("money", "A phone costs 360 dollars, paid in 12 equal monthly payments. How many dollars is each payment?",
     360 // 12),
    ("money", "Emma buys 6 apples at 45 cents each and pays with 5 dollars. How many cents of change does she "
     "get?", 500 - 6 * 45),
    ("average", "The scores of three tests are 72, 85 and 92. What is the average score?", (72 + 85 + 92) // 3),
    ("average", "Four friends have 10, 14, 9 and 19 stickers. If they share all the stickers equally, how many does "
     "each get?", (10 + 14 + 9 + 19) // 4),
    # test split from here (TEST_FROM)
    ("addition", "A library had 1,486 books and received 379 new ones. How many books does it have now?", 1486 + 379),
    ("addition", "Leo walked 3 kilometers on Saturday, 5 on Sunday and 4 on Monday. How many kilometers did he "
     "walk?", 3 + 5 + 4),
    ("subtraction", "A plane flies at 9,000 meters and descends 2,750 meters. At what height in meters is it "
     "now?", 9000 - 2750),
    ("subtraction", "A diver is 18 meters below the surface and rises 25 meters. How many meters above the surface "
     "is she? (Give a negative number if she is below.)", -18 + 25),
    ("multiplication", "A spider has 8 legs. How many legs do 23 spiders have?", 8 * 23),
    ("multiplication", "A factory makes 125 toys a day. How many toys does it make in 16 days?", 125 * 16),
    ("division", "A teacher has 84 pencils to give to 7 students equally. How many pencils does each student "
     "get?", 84 // 7),
    ("division", "A 1,200 page book is read at 40 pages a day. How many days does it take to finish?", 1200 // 40),
    ("multi-step", "A farmer collects 45 eggs a day for a week and sells them in boxes of 9. How many boxes does "
     "he fill?", 45 * 7 // 9),
    ("multi-step", "Kim has 3 bags with 16 marbles each and gives away 19 marbles. How many marbles does she have "
     "left?", 3 * 16 - 19),
    ("multi-step", "A concert hall has 25 rows of 32 seats. 650 tickets are sold. How many seats are empty?",
     25 * 32 - 650),
    ("percent", "A 60 dollar game is sold at 15 percent off. How many dollars do you save?", 60 * 15 // 100),
    ("percent", "A test has 40 questions and Maria got 90 percent right. How many questions did she get right?",
     40 * 90 // 100),
    ("time", "How many seconds are there in 12 minutes?", 12 * 60),
    ("time", "A machine makes one part every 15 minutes. How many parts does it make in 4 hours?", 4 * 60 // 15),
    ("geometry", "A rectangle has a perimeter of 50 meters and a length of 15 meters. What is its width in "
     "meters?", (50 - 2 * 15) // 2),
    ("geometry", "A triangle has a base of 10 centimeters and a height of 6 centimeters. What is its area in "
     "square centimeters?", 10 * 6 // 2),
    ("money", "Three friends split a 96 dollar bill equally. How many dollars does each pay?", 96 // 3),
    ("money", "A sandwich costs 7 dollars and a drink 3 dollars. How many dollars do 4 sandwiches and 4 drinks "
     "cost?", 4 * (7 + 3)),
    ("average", "A runner runs 5, 7, 6 and 10 kilometers on four days. What is the average distance per day in "
     "kilometers?", (5 + 7 + 6 + 10) // 4),
]
TEST_FROM = 40


def check() -> None:
    """Divisions and percentages above are exact: their integer results are the true answers."""
    assert 80 * 75 % 100 == 0 and 200 * 35 % 100 == 0 and 60 * 15 % 100 == 0 and 40 * 90 % 100 == 0
    assert 252 % 36 == 0 and 390 % 15 == 0 and 45 * 7 % 9 == 0 and 1200 % 40 == 0 and 240 % 15 == 0
    assert (72 + 85 + 92) % 3 == 0 and (10 + 14 + 9 + 19) % 4 == 0 and (5 + 7 + 6 + 10) % 4 == 0
    assert len({q for _, q, _ in PROBLEMS}) == len(PROBLEMS)


def write(path: Path, rows: list[tuple[str, str, int]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for category, question, gold in rows:
            fh.write(json.dumps({"question": question, "gold": gold, "category": category}) + "\n")


if __name__ == "__main__":
    check()
    write(HERE / "validation.jsonl", PROBLEMS[:TEST_FROM])
    write(HERE / "test.jsonl", PROBLEMS[TEST_FROM:])
    print(f"{TEST_FROM} validation and {len(PROBLEMS) - TEST_FROM} test questions")
