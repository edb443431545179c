"""Read-English test recordings, made with espeak-ng: (name, voice, words per minute, text).

Several voices and speeds, from about 3 to about 40 seconds; `long` is over 30 s, so it takes
two 30-second windows. Used by bench/whisper/bench.py and scripts/gen_whisper_golden.py.
"""
import os
import subprocess

CORPUS = [
    ("short", "en-us", 140, "Please close the door quietly when you leave the room."),
    ("weather", "en", 150, "The weather today will be cloudy in the morning, with light rain "
     "moving in from the west during the afternoon."),
    ("kitchen", "en-us+f3", 140, "She opened the kitchen window and listened to the birds "
     "singing in the garden behind the old stone house."),
    ("library", "en-gb-x-rp", 170, "The library is open every day except Sunday. Students "
     "may borrow up to ten books at a time, and they must return them within three weeks."),
    ("train", "en-us+m3", 130, "The train to the city leaves from the second platform. "
     "Passengers should buy their tickets before boarding, because the conductor does not "
     "sell them on board."),
    ("garden", "en+f2", 155, "In spring the garden fills with color. Tulips come first, then "
     "the roses, and by the middle of summer the tomatoes are ready to pick. Every evening "
     "my grandmother walks along the rows and checks each plant."),
    ("science", "en-us", 180, "Scientists have long studied how birds find their way across "
     "oceans and mountains. Some species use the position of the sun, while others seem to "
     "sense the magnetic field of the earth. Young birds often learn the route by following "
     "older members of the flock."),
    ("meeting", "en-gb-x-rp+m2", 145, "Good morning everyone, and thank you for coming to "
     "this meeting. Today we will review the results of the last quarter, discuss the plans "
     "for the new office, and decide who will lead the training program. Please keep your "
     "questions until the end of each section."),
    ("recipe", "en-us+f4", 165, "To make the bread, mix the flour, water, salt and yeast in "
     "a large bowl. Knead the dough for about ten minutes until it feels smooth. Cover it "
     "with a clean towel and let it rise in a warm place for one hour. Then shape the loaf, "
     "put it in a hot oven, and bake it until the crust is golden brown."),
    ("long", "en-us", 150, "The small town sits at the edge of a wide river. Every morning "
     "the fishermen push their boats into the water before the sun comes up, and the market "
     "opens soon after. Children walk to school along the river path, and their parents stop "
     "at the bakery for fresh bread. In the afternoon the streets grow quiet, because most "
     "people work in the fields or in the small factory on the hill. When evening comes, "
     "families gather on their porches to talk about the day, and the old bridge is lit by "
     "a row of yellow lamps. Visitors often say that time moves more slowly here, and that "
     "is exactly why many of them decide to stay for another night."),
]


def make(out_dir):
    """Writes NAME.wav (espeak-ng's own 22.05 kHz mono) for each entry; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, voice, wpm, text in CORPUS:
        path = os.path.join(out_dir, name + ".wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", path, text], check=True)
        paths.append(path)
    return paths
