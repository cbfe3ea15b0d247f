"""Voices and scripts of the AMD corpus's third round (bench/amd/corpus.py, `plan_round3`): data only.

Split by VOICE FAMILY and SCRIPT like the rounds before it: espeak-ng accents and voice variants are disjoint between
dev and test, flite's kal voices (the speaker of festival's kal_diphone) and festival (English and Italian) are
test-only, and no sentence or sentence fragment is shared between the splits.
"""
from __future__ import annotations

#: espeak-ng voice = accent + "+" + variant; both lists are disjoint between the splits
ESPEAK = {
    "dev": {"accents": ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp"],
            "male": ["m1", "m3", "m5", "m8", "klatt", "klatt3", "klatt5", "Andy", "david", "edward", "max", "paul",
                     "travis"],
            "female": ["f1", "f2", "f4", "Alicia", "Annie", "belinda", "linda", "steph"]},
    "test": {"accents": ["en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"],
             "male": ["m2", "m4", "m6", "m7", "klatt2", "klatt4", "klatt6", "Alex", "adam", "benjamin", "caleb",
                      "john", "Lee", "michel", "victor"],
             "female": ["f3", "f5", "Andrea", "aunty", "grandma", "steph2"]},
}
#: flite's built-in voices (awb_time is a limited-domain clock voice, not used); kal and kal16 are one speaker
FLITE = {"dev": {"male": ["awb", "rms"], "female": []},
         "test": {"male": ["kal", "kal16"], "female": ["slt"]}}
#: festival, test-only: English diphone and HTS voices, and the Italian diphone voices (festvox-italp16k,
#: festvox-itapc16k: bench-only Debian packages, docs/amd.md)
FESTIVAL = {"test": {"male": ["kal_diphone", "ked_diphone"], "female": ["cmu_us_slt_arctic_hts"]}}
FESTIVAL_LANG = {"test": {"it": ["lp_diphone", "pc_diphone"]}}

#: per split: clips per scenario in round 3 (scale 1.0)
COUNTS = {
    "human_short": 24, "human_repeat": 24, "human_business": 30, "human_second": 12,
    "machine_long_greeting": 30, "machine_carrier_vm": 30, "machine_multi_beep": 24,
    "machine_music_intro": 14, "machine_pause_beep": 12, "machine_hi_pause": 12, "machine_female_high": 12,
    "human_short_lang": 10, "human_business_lang": 8, "machine_greeting_lang": 12,
    "sit": 6, "fax_cng": 6,
}
#: per split: human/machine clips of each of these noise kinds in round 3 (so every noise kind has ≥ 30 per split)
NOISE_QUOTA = {"office": 30, "street": 30, "music_vocals": 30}

T3 = {
    "dev": {
        "short": ["Hello, who's this?", "Yeah, go ahead.", "Hi, it's Morgan.", "Hello? Yes?", "Morning!",
                  "Hi, this is Taylor.", "Uh, hi?", "Hello, Ellis here.", "Yes, hello, speaking.", "Hiya.",
                  "Hello, Ruth speaking.", "Yeah, who's calling?"],
        "second": ["Hello? Is someone there?", "Hi? Can you hear me?", "Hello? You're breaking up."],
        "repeat": [("Hello?", "Hello? Who's this?"), ("Hi?", "Hello? Anybody?"), ("Yes?", "Yes? Hello?"),
                   ("Hello?", "Hello?", "Who is calling, please?"), ("Hello?", "Is anybody there?")],
        "business": ["Good morning, Harbor View Hotel, front desk, this is Nina.",
                     "Metro Plumbing, Frank speaking, what can I do for you?",
                     "Thanks for calling Oakridge Vet, this is Sara, how can I help?",
                     "Customer service, my name is Ben, may I have your account number?",
                     "Good evening, Golden Dragon, pick up or delivery?",
                     "Hi, Sunrise Realty, Claire speaking, how can I help you today?"],
        "name": ["Olivia Brooks", "Marcus", "the Nguyen family", "Dr. Harris", "Katie and Paul"],
        "company": ["Oakridge Vet", "Metro Plumbing", "Sunrise Realty"],
        "opener": ["Hi, you've reached {name}.", "Hello, this is {name}.", "You have reached the voicemail of {name}.",
                   "Hey there, it's {name}.", "Thank you for calling {company}, this is {name}."],
        "unavailable": ["I'm not available to take your call right now.",
                        "I can't come to the phone at the moment.",
                        "I'm either on another call or away from my desk.",
                        "We're unable to answer the phone right now."],
        "instructions": ["Please leave your name, your number and a short message after the tone, and I'll get back "
                         "to you as soon as I can.",
                         "If this is urgent, you can reach me on my mobile at five five five, two one eight, four "
                         "four nine zero.",
                         "Our office hours are eight to six, Monday through Friday.",
                         "For the front desk, please press zero at any time.",
                         "Please speak slowly and spell your last name."],
        "closing": ["Thanks, and have a great day.", "Talk to you soon.", "Thank you."],
        "carrier_intro": ["Your call has been forwarded to an automatic voice message system.",
                          "The person at extension four two one"],
        "carrier_rest": ["is not available. At the tone, please record your message. When you have finished "
                         "recording, you may hang up, or press one for more options.",
                         "is not available. Please record your message after the tone. When you are done, hang up "
                         "or press pound for more options."],
        "carrier_plain": ["The person you are calling is not available. At the tone, please record your message. "
                          "When you have finished recording, you may hang up.",
                          "The subscriber you have called is unavailable. Please leave a message after the tone."],
        "babble": ["I'll get the next round, what are you having?", "No, the other folder, the blue one.",
                   "We landed about an hour late.", "Turn left after the bridge, then it's the second house."],
    },
    "test": {
        "short": ["Hello, yes, who is it?", "Yo.", "Hi, Casey here.", "Hello, good morning.", "Yes, speaking.",
                  "Hello, this is Ari.", "Um, hello?", "Hey, what's up?", "Hello, Noor speaking.",
                  "Yes, who's this please?"],
        "second": ["Hello? I can't hear anything.", "Hi? Are you still there?", "Hello? Say again?"],
        "repeat": [("Hello?", "Hello? Hello?"), ("Hi?", "Hi, who's on the line?"), ("Yeah?", "Hello, who is it?"),
                   ("Hello?", "Hello?", "Is this a robot?")],
        "business": ["Good afternoon, Maple Grove Dental, this is Irene, how may I help you?",
                     "Hollis Hardware, Dan speaking.", "Thank you for calling Crestline Motors, Vic speaking.",
                     "Billing department, this is Tara, can I get your name please?",
                     "Hi, Riverbend Pizza, is this for pick up?"],
        "name": ["Gabriel Stone", "Hana", "the Okafor household", "Professor Lind", "Jess and Tom"],
        "company": ["Maple Grove Dental", "Crestline Motors", "Hollis Hardware"],
        "opener": ["Hello, you've reached the phone of {name}.", "Hi, {name} here.", "This is the voicemail box of "
                   "{name}.", "Hi, thanks for calling {company}, you've reached {name}."],
        "unavailable": ["Sorry I missed you.", "I'm not able to pick up just now.",
                        "I'm away from the office this week.", "Nobody can take your call at the moment."],
        "instructions": ["Leave a message with your number and the best time to call, and I will return your call.",
                         "For sales, call the main line at eight hundred, four four two, one nine one nine.",
                         "I check my messages every evening.",
                         "To leave a callback number only, press two."],
        "closing": ["Bye for now.", "Have a good one.", "Cheers."],
        "carrier_intro": ["You have been forwarded to the voice mailbox of", "The mobile subscriber"],
        "carrier_rest": ["is not available to take your call. Please leave your message after the tone. To send a "
                         "numeric page, press five.",
                         "cannot answer right now. Record your message at the tone, then hang up."],
        "carrier_plain": ["The wireless customer you are calling is not available. Please leave a message after the "
                          "beep.",
                          "The number you are calling cannot take your call. Please record a message at the tone."],
        "babble": ["Did anyone feed the cat this morning?", "The printer on the third floor is jammed again.",
                   "I'd go with the grey one, honestly.", "Let's push it to next week."],
    },
}
