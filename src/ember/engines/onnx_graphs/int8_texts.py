"""The texts int8 quantisation fits on and the texts it reports fidelity on."""

from __future__ import annotations

# Texts to fit on and texts to report on: apart, so the recorded cosine is not the one fitted.
# Very short inputs come first and are many: a vector pooled over 3-4 tokens, [CLS] and [SEP]
# among them, is where int8 errors show most.
CALIBRATION_TEXTS: tuple[str, ...] = (
    "yes",
    "Thanks!",
    "between",
    "of",
    "red apple",
    "per the",
    "it is the",
    "New York",
    "2024-05-01",
    "Why?",
    "reset password",
    "He said no.",
    "The cat sat on the mat.",
    "Where is the nearest train station?",
    "Please send me the invoice for last month.",
    "Photosynthesis turns light into chemical energy in plants.",
    "The committee postponed its decision until the budget review in March.",
    "I can't log in: the app keeps saying my session expired, even right after I sign in.",
    "A pinch of salt, two eggs, 200 g of flour and a cup of milk make a simple batter.",
    "def add(a, b):\n    return a + b",
    "SELECT name, count(*) FROM users GROUP BY name ORDER BY 2 DESC;",
    "| id | name | score |\n|----|------|-------|\n| 1 | Ada | 98 |",
    "Error 504: upstream timed out after 30000 ms (retry 3/3)",
    "https://example.com/docs/v2/install?lang=en#linux",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "La réunion est reportée à jeudi prochain.",
    "The treaty, signed after years of negotiation, set fishing quotas for the northern "
    "waters and created a joint commission to settle disputes between the fleets.",
    "Vaccines train the immune system to recognise a pathogen without causing the disease. "
    "Most contain an inactivated virus, a protein fragment, or instructions for making one, "
    "and the memory cells they leave behind respond quickly if the real infection arrives.",
    "The first step is to measure. Before changing anything, record how long each stage of "
    "the pipeline takes on a realistic workload, repeat the measurement a few times, and note "
    "how much it varies. Only then try one change at a time, and keep the ones that move the "
    "median by more than the noise. Most slow systems are slow in one place, and it is rarely "
    "the place anyone guessed before measuring.",
)

FIDELITY_TEXTS: tuple[str, ...] = (
    "no",
    "Hello",
    "which is",
    "agreed",
    "blue sky",
    "doubt that",
    "London",
    "3.14159",
    "How?",
    "order status",
    "She left early.",
    "The dog barked at the mailman.",
    "What time does the museum open on Sundays?",
    "Could you review my pull request before lunch?",
    "Glaciers carve valleys as they slowly move downhill.",
    "The council approved the new bike lanes after a long public debate.",
    "My laptop fan is loud and the battery drains fast since the last update; any ideas?",
    "Mix the yeast with warm water, wait ten minutes, then knead the dough for eight more.",
    "for i in range(10):\n    print(i * i)",
    "curl -X POST -H 'Content-Type: application/json' -d '{\"input\": \"hi\"}' localhost:8080",
    '<div class="card"><h2>Title</h2><p>Body text</p></div>',
    "WARN disk usage at 91% on /dev/sda1 (threshold 90%)",
    "El tren sale a las ocho de la mañana.",
    "Il pleut depuis trois jours sans arrêt.",
    "Coral reefs cover a tiny fraction of the ocean floor yet shelter about a quarter of all "
    "marine species, which is why bleaching events worry biologists so much.",
    "Interest rates affect almost every price in an economy. When a central bank raises them, "
    "borrowing becomes more expensive, households and firms spend less, and demand cools; "
    "lower rates work the other way, at the risk of higher inflation later.",
    "Good documentation starts from the reader's question. A tutorial walks a newcomer through "
    "one complete task; a how-to guide solves one specific problem for someone who already "
    "knows the basics; a reference lists every option precisely; and an explanation says why "
    "the system is shaped the way it is. Mixing the four in one page serves none of them well.",
)
