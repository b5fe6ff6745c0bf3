drop table login_throttle;
drop table story_beats;
drop table stories;
drop table worlds;
drop table sessions;
drop table users;
